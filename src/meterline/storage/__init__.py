"""Storage adapters. ``sqlite`` is the embedded default: ledger, rollups and catalog in one
SQLite file, so an event, its dedupe key and its rollup deltas commit in one transaction."""
