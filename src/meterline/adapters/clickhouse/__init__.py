"""ClickHouse adapters (scale mode): raw events and usage rollups over ClickHouse's HTTP
interface (``clickhouse-connect``, the ``scale`` extra).

Exactly once without transactions: every insert carries a deterministic
``insert_deduplication_token`` derived from the consumed range it holds, every table that
receives batches keeps a deduplication window, and a batch's range is recorded before its rows
are inserted, so after a crash the same range (and so the same token) is inserted again and
ClickHouse drops the repeat (:mod:`.usage`).
"""
