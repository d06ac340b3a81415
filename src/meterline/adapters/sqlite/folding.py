"""Folding a chunk's minute states into every bucket size and summary in SQL.

The aggregator's fold (``domain.meters.fold``) keeps one state per (meter, minute, subject,
group). Every coarser bucket — the rollups' quarter hours and hours, the summaries' meter-wide
quarter hours, hours and days and each subject's day and month — is a merge of those minute
states. With many subjects almost every event has buckets of its own at every size, so merging
them in Python and binding each merged row costs more than SQLite's own work on the row.

Here the minute states of one aggregation go once into a temporary table (ints and text only),
and one ``INSERT … SELECT … GROUP BY … ON CONFLICT DO UPDATE`` per bucket size merges them into
the stored rows, with the same ``DO UPDATE`` as the per-row upsert (``rollups.upsert``).

Exactness: SQLite merges with integer ``sum``/``min``/``max`` only. :func:`staged_rows` takes
an aggregation only when every minute state's value is stored as an integer
(``decimals.stored``) and the magnitudes of all its totals add up to less than 2**62: then
every merged total is an integer below 2**62, exactly what ``stored`` makes of the same sum in
Python, so the rows are identical to the Python fold's, and ``rebuild --check`` agrees. Anything
else (fractions, totals near the limit, LATEST, gauges, distinct values) is folded in Python.

The staging tables are temporary tables of the writer's connection (``temp_store=MEMORY``:
their subjects never reach a file, see docs/erasure.md), emptied before and after each use, and
written in the writer's transaction: a task rolled back takes its staged rows with it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from meterline.adapters.sqlite.summaries import DAY, HOUR, MONTH, NO_GROUP, QUARTER, WIDE
from meterline.domain.decimals import STORED_INT_LIMIT, stored
from meterline.domain.meters.fold import COARSER, MINUTE, Key
from meterline.domain.meters.model import Aggregation

STAGED = "temp.fold_minutes"
_CREATE = (
    "CREATE TABLE IF NOT EXISTS {table}"
    " (meter INTEGER NOT NULL, subject TEXT NOT NULL, bucket INTEGER NOT NULL, group_key TEXT NOT NULL,"
    " cnt INTEGER NOT NULL, v INTEGER)"
)

# Per aggregation: the state columns written (as rollups._STATE), how minute states merge in
# SQL, and which field of a fold state is the value column (None: count only).
_MERGED: dict[Aggregation, tuple[str, str, int | None]] = {
    Aggregation.COUNT: ("cnt", "sum(cnt)", None),
    Aggregation.SUM: ("cnt, total", "sum(cnt), sum(v)", 1),
    Aggregation.AVG: ("cnt, total", "sum(cnt), sum(v)", 1),
    Aggregation.MIN: ("cnt, low", "sum(cnt), min(v)", 2),
    Aggregation.MAX: ("cnt, high", "sum(cnt), max(v)", 3),
}


def staged_rows(aggregation: Aggregation, states: dict[Key, list[Any]]) -> list[tuple[Any, ...]] | None:
    """The rows to stage for ``states`` (minute states of ``aggregation``), or None when SQLite
    could not merge them exactly (see the module doc)."""
    if aggregation not in _MERGED:
        return None
    field = _MERGED[aggregation][2]
    if field is None:
        return [(meter, subject, bucket, group, s[0]) for (meter, _, subject, bucket, group), s in states.items()]
    rows: list[tuple[Any, ...]] = []
    magnitude = 0
    for (meter, _, subject, bucket, group), s in states.items():
        value = stored(s[field])
        if type(value) is not int:
            return None
        magnitude += value if value >= 0 else -value
        rows.append((meter, subject, bucket, group, s[0], value))
    return rows if magnitude < STORED_INT_LIMIT else None


def _floor(size: int) -> str:
    # floor, not SQLite's truncating %, so seconds before 1970 fall in the right bucket
    return f"(bucket - ((bucket % {size}) + {size}) % {size})"


_MONTH = f"CAST(strftime('%s', {_floor(DAY)}, 'unixepoch', 'start of month') AS INTEGER)"
WIDE_STAGED = "temp.fold_wide"
"""The staged states merged per meter and UTC quarter hour (every subject and group value):
the meter-wide summaries are merged from these few rows instead of sorting every staged row
three times."""

# (source, table, level, subject, bucket, group key) of each bucket size, as SQL over the
# staged rows. The minute rows are the staged rows themselves (one per key: no GROUP BY).
_ROLLUPS = [(STAGED, "rollups", size, "subject", _floor(size), "group_key") for size in COARSER]
_SUMMARIES = [
    (WIDE_STAGED, "summaries", QUARTER, "subject", "bucket", "group_key"),
    (WIDE_STAGED, "summaries", HOUR, "subject", _floor(HOUR), "group_key"),
    (WIDE_STAGED, "summaries", DAY, "subject", _floor(DAY), "group_key"),
    (STAGED, "summaries", DAY, "subject", _floor(DAY), f"'{NO_GROUP}'"),
    (STAGED, "summaries", MONTH, "subject", _MONTH, f"'{NO_GROUP}'"),
]


def write_staged(
    conn: sqlite3.Connection,
    aggregation: Aggregation,
    rows: list[tuple[Any, ...]],
    prefix: str,
    *,
    summaries: bool,
    on_conflict: str,
) -> None:
    """Merge the staged minute ``rows`` (:func:`staged_rows`) into ``{prefix}rollups`` at every
    bucket size and (if ``summaries``) into ``{prefix}summaries``; ``on_conflict`` is the
    ``DO UPDATE SET`` of the aggregation (``rollups._COLUMNS``)."""
    columns, merged, field = _MERGED[aggregation]
    state = "cnt" if field is None else "cnt, v"
    for table in (STAGED, WIDE_STAGED):
        conn.execute(_CREATE.format(table=table))
        conn.execute(f"DELETE FROM {table}")
    marks = ",".join("?" * len(rows[0])) if rows else "?"
    conn.executemany(f"INSERT INTO {STAGED} (meter, subject, bucket, group_key, {state}) VALUES ({marks})", rows)
    upsert = f" ON CONFLICT (meter, level, subject, bucket, group_key) DO UPDATE SET {on_conflict}"
    into = f"INSERT INTO {prefix}rollups (meter, level, subject, bucket, group_key, {columns})"
    conn.execute(f"{into} SELECT meter, {MINUTE}, subject, bucket, group_key, {state} FROM {STAGED} WHERE true{upsert}")
    if summaries:
        conn.execute(
            f"INSERT INTO {WIDE_STAGED} (meter, subject, bucket, group_key, {state})"
            f" SELECT meter, '{WIDE}', {_floor(QUARTER)} AS b, '{NO_GROUP}', {merged} FROM {STAGED} GROUP BY meter, b"
        )
    for source, table, level, subject, bucket, group in _ROLLUPS + (_SUMMARIES if summaries else []):
        keys = ", ".join(k for k in ("meter", subject, "b", group) if not k.startswith("'"))
        conn.execute(
            f"INSERT INTO {prefix}{table} (meter, level, subject, bucket, group_key, {columns})"
            f" SELECT meter, {level}, {subject}, {bucket} AS b, {group}, {merged} FROM {source}"
            f" WHERE true GROUP BY {keys}{upsert}"
        )
    for table in (STAGED, WIDE_STAGED):
        conn.execute(f"DELETE FROM {table}")
