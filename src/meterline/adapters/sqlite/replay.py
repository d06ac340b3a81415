"""Ledger ranges in, replayed meters out: reading entries and writing a replay's results.

The folding itself is pure (``domain.meters.fold``); the aggregator, the backfill of a new
meter and ``rebuild`` all use it. This module reads ledger entries in sequence order and
writes what a :class:`Replay` produced (rollup deltas, admitted group values, subjects).
"""

from __future__ import annotations

import sqlite3

from meterline.adapters.sqlite.gauges import Late
from meterline.adapters.sqlite.rollups import write_fold
from meterline.adapters.sqlite.summaries import write_counts
from meterline.domain.meters.fold import LedgerEntry, Replay, admit_groups, event_data

__all__ = [
    "CHUNK",
    "ENTRIES",
    "OFFSET_KEY",
    "LedgerEntry",
    "Replay",
    "admit_groups",
    "event_data",
    "ledger_rows",
    "set_offset",
    "stored_offset",
    "write_replay",
]

CHUNK = 20_000
OFFSET_KEY = "aggregated_seq"
"""In ``meta``: the aggregator's live offset. Every ledger entry up to it is in the rollups of
every live meter, except the range ``(backfill_done, backfill_to]`` a new meter still has to
apply (its backfill offset)."""


def stored_offset(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (OFFSET_KEY,)).fetchone()
    return 0 if row is None else int(row[0])


def set_offset(conn: sqlite3.Connection, offset: int) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (OFFSET_KEY, str(offset)))


def write_replay(conn: sqlite3.Connection, replay: Replay, prefix: str = "", *, summaries: bool = True) -> set[Late]:
    """Write the replay's folded deltas (rollups and summaries), ledger counts, new group values
    and new meter subjects; clear them. ``summaries=False``: see ``rollups.write_fold``.
    Returns the gauge hours to recompute (``rollups.write_fold``)."""
    late = write_fold(conn, replay.fold, prefix, summaries=summaries)
    if replay.counts:
        write_counts(conn, replay.counts, prefix)
    conn.executemany(f"INSERT OR IGNORE INTO {prefix}group_values VALUES (?,?,?)", replay.new_groups)
    conn.executemany(f"INSERT OR IGNORE INTO {prefix}meter_subjects VALUES (?,?)", replay.new_subjects)
    replay.new_groups.clear()
    replay.new_subjects.clear()
    return late


ENTRIES = (
    "SELECT e.seq, e.namespace, e.source, e.type, e.subject, e.time_us, e.raw, e.received_us, NULL,"
    " coalesce(c.original, 0) FROM events e LEFT JOIN corrections c ON c.seq = e.seq"
)
"""Ledger entries as :class:`LedgerEntry` rows, corrections marked (append a WHERE clause on ``e``)."""


def ledger_rows(conn: sqlite3.Connection, after: int, upto: int) -> list[LedgerEntry]:
    """Ledger entries with ``after < seq <= upto``, in sequence order."""
    rows = conn.execute(f"{ENTRIES} WHERE e.seq > ? AND e.seq <= ? ORDER BY e.seq", (after, upto))
    return [LedgerEntry(*row) for row in rows]
