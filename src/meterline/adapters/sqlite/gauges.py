"""TIME_WEIGHTED_SUM rollups in SQLite: writing gauge bucket states and reading them back.

A gauge bucket row keeps, in the rollups' columns: ``cnt`` readings, ``total`` the integral
between its first and last reading (level x seconds), ``first_t``/``first_seq`` its first
reading, ``last_t``/``last_seq``/``last_v`` its last (``domain.meters.gauges``).

Writing joins a chunk's state into the stored one when one lies wholly before the other
(readings arriving in time order, the usual case, cost one read and one write per bucket).
When they interleave — a late reading inside a stored bucket — nothing can be joined: the
(meter, subject, hour) is returned, and the writer recomputes that hour from the ledger
(``recompute.recompute(..., late=...)``) in the same transaction, exactly as it does for a
corrected event. So the stored state is always the fold of the bucket's counted readings,
whatever order they came in, and ``rebuild --check`` finds it identical.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from meterline.domain.decimals import stored
from meterline.domain.meters.fold import Key
from meterline.domain.meters.gauges import join, point_state
from meterline.domain.meters.query import BucketState

HOUR = 3600
COLUMNS = "meter, level, subject, bucket, group_key, cnt, total, first_t, first_seq, last_t, last_seq, last_v"
Late = tuple[int, str, int]
"""(meter key, subject, hour start in epoch seconds) whose gauge buckets must be recomputed."""


def write_gauges(conn: sqlite3.Connection, table: str, states: dict[Key, list[Any]]) -> set[Late]:
    """Join each state into ``table``'s row of its key (see the module doc); returns the hours
    whose stored states interleave with the new ones (not written: to be recomputed)."""
    late: set[Late] = set()
    select = (
        f"SELECT cnt, total, first_t, first_seq, last_t, last_seq, last_v FROM {table}"
        " WHERE meter = ? AND level = ? AND subject = ? AND bucket = ? AND group_key = ?"
    )
    rows = []
    for key, state in states.items():
        meter, _, subject, bucket, _ = key
        found = conn.execute(select, key).fetchone()
        if found is not None:
            joined = join(_state(found), state)
            if joined is None:
                late.add((meter, subject, bucket - bucket % HOUR))
                continue
            state = joined
        rows.append(row_of(key, state))
    conn.executemany(f"INSERT OR REPLACE INTO {table} ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    return late


def row_of(key: Key, s: list[Any]) -> tuple[Any, ...]:
    last_t, last_seq, last_v = s[4]
    return (*key, s[0], stored(s[1]), s[2][0], s[2][1], last_t, last_seq, stored(last_v))


def _state(row: tuple[Any, ...]) -> list[Any]:
    cnt, total, first_t, first_seq, last_t, last_seq, last_v = row
    return [cnt, Decimal(total), (first_t, first_seq), None, (last_t, last_seq, Decimal(last_v))]


def read_gauges(
    conn: sqlite3.Connection, meter: int, level: int, start: int, end: int, subjects: tuple[str, ...]
) -> Iterator[BucketState]:
    """The gauge states of ``[start, end)`` at ``level``, in (subject, bucket) order."""
    sql, params = _where(
        "SELECT subject, group_key, bucket, cnt, total, first_t, first_seq, last_t, last_seq, last_v FROM rollups",
        meter,
        subjects,
    )
    sql += " AND level = ? AND bucket >= ? AND bucket < ? ORDER BY subject, bucket"
    for subject, group, bucket, cnt, total, first_t, first_seq, last_t, last_seq, last_v in conn.execute(
        sql, [*params, level, start, end]
    ):
        last = (last_t, last_seq, Decimal(last_v))
        yield BucketState(subject, group, bucket, cnt, Decimal(total), None, None, last, (first_t, first_seq))


def carried(
    conn: sqlite3.Connection, meter: int, before: int, subjects: tuple[str, ...]
) -> dict[tuple[str, str], BucketState]:
    """Per series, its last reading before ``before`` (epoch seconds on a whole minute), as a
    one-reading state: from its latest hour bucket before that hour, and its minutes since."""
    hour = before - before % HOUR
    out: dict[tuple[str, str], BucketState] = {}
    for level, first, last in ((HOUR, None, hour), (60, hour, before)):
        sql, params = _where(
            "SELECT subject, group_key, max(bucket), last_t, last_seq, last_v FROM rollups", meter, subjects
        )
        sql += " AND level = ? AND bucket < ?"
        params += [level, last]
        if first is not None:
            sql += " AND bucket >= ?"
            params.append(first)
        # SQLite takes the bare columns of an aggregate with one max() from the row holding it
        for subject, group, _, last_t, last_seq, last_v in conn.execute(sql + " GROUP BY subject, group_key", params):
            point = (last_t, last_seq, Decimal(last_v))
            known = out.get((subject, group))
            if known is None or known.latest is None or known.latest[:2] < point[:2]:
                out[(subject, group)] = point_state(subject, group, point)
    return out


def _where(select: str, meter: int, subjects: Sequence[str]) -> tuple[str, list[Any]]:
    if subjects:
        marks = ",".join("?" * len(subjects))
        return f"{select} WHERE meter = ? AND subject IN ({marks})", [meter, *subjects]
    return f"{select} WHERE meter = ?", [meter]
