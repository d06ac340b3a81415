"""The subjects and group-by values a meter has seen, optionally within a time range.

Both are answered from the rollups (never the ledger), at their one-minute resolution: a minute
bucket counts when it overlaps ``[start, end)``. A range is read as its whole hours from the
hourly buckets and only its ragged edges from the minute buckets; listing subjects costs one
index probe per subject and bucket range, however long the range is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import msgspec

from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.meters import settled
from meterline.domain.meters.model import Aggregation, Meter

MINUTE, HOUR = 60, 3600
_OPEN_START, _OPEN_END = -(2**62), 2**62  # an open end of the range: before or after any bucket


class SqliteMeterValues:
    """The :class:`~meterline.ports.meter_values.MeterValues` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def subjects(self, meter: Meter, start: int | None, end: int | None) -> list[str]:
        self._db.fresh()  # the aggregator writes these tables: wait (bounded) for the ledger as of now
        settled(self._db, meter)  # and for the meter's backfill
        return subjects(self._db.reader(), meter, start, end)

    def group_values(self, meter: Meter, dimension: str, start: int | None, end: int | None) -> list[str]:
        self._db.fresh()
        settled(self._db, meter)
        return group_values(self._db.reader(), meter, dimension, start, end)


def segments(start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """``(level, first, last)`` bucket ranges (``first <= bucket < last``) that cover the minutes
    overlapping ``[start, end)`` (epoch seconds): hours where whole, minutes at the edges."""
    if end <= start:
        return
    lo, hi = start - start % MINUTE, -(-end // MINUTE) * MINUTE
    hour_lo, hour_hi = -(-lo // HOUR) * HOUR, hi - hi % HOUR
    if hour_lo >= hour_hi:
        yield MINUTE, lo, hi
        return
    if lo < hour_lo:
        yield MINUTE, lo, hour_lo
    yield HOUR, hour_lo, hour_hi
    if hour_hi < hi:
        yield MINUTE, hour_hi, hi


def _table(meter: Meter) -> str:
    if meter.spec.aggregation is Aggregation.APPROX_UNIQUE_COUNT:
        return "sketches"
    return "uniques" if meter.spec.aggregation is Aggregation.UNIQUE_COUNT else "rollups"


def subjects(conn: sqlite3.Connection, meter: Meter, start: int | None, end: int | None) -> list[str]:
    """Subjects with usage in ``meter`` (within ``[start, end)`` when given), sorted."""
    if start is None and end is None:
        rows = conn.execute("SELECT subject FROM meter_subjects WHERE meter = ? ORDER BY subject", (meter.key,))
        return [r[0] for r in rows]
    parts = list(segments(_OPEN_START if start is None else start, _OPEN_END if end is None else end))
    if not parts:
        return []
    probe = f"EXISTS (SELECT 1 FROM {_table(meter)} WHERE meter = ? AND level = ? AND subject = s.subject"
    probe += " AND bucket >= ? AND bucket < ?)"
    sql = "SELECT subject FROM meter_subjects s WHERE meter = ? AND (" + " OR ".join([probe] * len(parts)) + ")"
    params: list[object] = [meter.key]
    for level, first, last in parts:
        params += [meter.key, level, first, last]
    return [r[0] for r in conn.execute(sql + " ORDER BY subject", params)]


def group_values(
    conn: sqlite3.Connection, meter: Meter, dimension: str, start: int | None, end: int | None
) -> list[str]:
    """The values ``dimension`` took in ``meter`` within ``[start, end)``, sorted; events without
    the dimension contribute no value."""
    position = sorted(meter.spec.group_by).index(dimension)
    found: set[str] = set()
    for level, first, last in segments(_OPEN_START if start is None else start, _OPEN_END if end is None else end):
        rows = conn.execute(
            f"SELECT DISTINCT group_key FROM {_table(meter)} WHERE meter = ? AND level = ?"
            " AND subject IN (SELECT subject FROM meter_subjects WHERE meter = ?) AND bucket >= ? AND bucket < ?",
            (meter.key, level, meter.key, first, last),
        )
        for (group_key,) in rows:
            value = msgspec.json.decode(group_key)[position]
            if value is not None:
                found.add(value)
    return sorted(found)
