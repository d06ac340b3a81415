"""TIME_WEIGHTED_SUM on ClickHouse: the gauge states of ``usage_gauges`` and how a query
integrates them (``domain.meters.gauges``: the same states and integral as embedded mode).

**Writing.** Each batch inserts, per key (meter, bucket size, subject, bucket, group), the state
of its own readings in the bucket: ``count``, ``area`` (the integral from its first reading to
its last), ``first_at`` (time, seq) and ``last_at`` (time, seq, level) — rows of a plain
MergeTree, one per batch and key, under the batch's deduplication token (a batch redone after
a crash is the same insert, dropped). Nothing is merged when written: a state cannot be
updated in place, and two batches' states of one bucket join only when one lies wholly before
the other.

**Reading.** Per series and bucket, the batches' states are joined in time order
(``gauges.join``), which is exact. When they interleave — a late reading inside a bucket a
previous batch wrote — the bucket's readings are read back from the raw ``events`` table
instead (only the events the rollups reflect, as for a partial minute) and enter the integral
one by one: the same answer as embedded mode, which recomputes such a bucket from its ledger.
The level carried into the range is the last reading before it (``max(last_at)`` of the
hour buckets before its hour and the minute buckets since, as embedded mode reads it; in an
hour a correction touched, the last reading that counts, from the raw events).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.corrections import hour_key
from meterline.domain.decimals import in_stored_form
from meterline.domain.meters.fold import Key, LedgerEntry
from meterline.domain.meters.gauges import join, point_state
from meterline.domain.meters.query import BucketState

HOUR = 3600
Series = tuple[str, str]
"""(subject, group key)."""


def gauge_rows(states: dict[Key, list[Any]], meters: set[int], exact: Callable[[Decimal], Decimal]) -> list[list[Any]]:
    """A fold's TIME_WEIGHTED_SUM states (``[count, area, first, None, last]``) of ``meters`` as
    rows of ``usage_gauges``, in key order (the same batch is always the same insert)."""
    rows = []
    for key in sorted(k for k in states if k[0] in meters):
        count, area, first, _, (t, seq, level) = states[key]
        rows.append([*key, count, exact(area), (first[0], first[1]), (t, seq, exact(level))])
    return rows


def read_states(
    conn: Connection, where: str, params: dict[str, Any]
) -> tuple[list[BucketState], list[tuple[str, str, int]]]:
    """The joined state of each (series, bucket) ``where`` selects, and the (subject, group
    key, bucket) whose batches' states interleave (to be read from the raw events)."""
    sql = (
        "SELECT subject, group_key, bucket, count, area, first_at, last_at FROM usage_gauges"
        f" WHERE {where} ORDER BY subject, group_key, bucket, first_at"
    )
    joined: list[BucketState] = []
    interleaved: list[tuple[str, str, int]] = []
    for (subject, group, bucket), rows in itertools.groupby(conn.rows(sql, params), key=lambda r: r[:3]):
        state: list[Any] | None = None
        for _, _, _, count, area, first, last in rows:
            one = [int(count), in_stored_form(area), (int(first[0]), int(first[1])), None, _point(last)]
            state = one if state is None else join(state, one)
            if state is None:
                break
        if state is None:
            interleaved.append((subject, group, int(bucket)))
        else:
            last = state[4]
            joined.append(BucketState(subject, group, int(bucket), state[0], state[1], None, None, last, state[2]))
    return joined, interleaved


def compared(conn: Connection, table: str, where: str, params: dict[str, Any]) -> dict[Key, tuple[Any, ...]]:
    """Per key, what a rebuild compares of its gauge rows: the joined state (count, area, first,
    last), or — when its batches' states interleave, and only the raw readings could join them —
    (count, first, last)."""
    sql = (
        f"SELECT meter, level, subject, bucket, group_key, count, area, first_at, last_at FROM {table}"
        f" WHERE {where} ORDER BY meter, level, subject, bucket, group_key, first_at"
    )
    out: dict[Key, tuple[Any, ...]] = {}
    for key, rows in itertools.groupby(conn.rows(sql, params), key=lambda r: tuple(r[:5])):
        states: list[list[Any]] = [
            [int(c), in_stored_form(a), (int(f[0]), int(f[1])), None, _point(last)] for *_, c, a, f, last in rows
        ]
        state: list[Any] | None = states[0]
        for one in states[1:]:
            state = None if state is None else join(state, one)
        k = (int(key[0]), int(key[1]), str(key[2]), int(key[3]), str(key[4]))
        if state is not None:
            out[k] = (state[0], state[1], state[2], state[4])
        else:
            out[k] = (sum(s[0] for s in states), min(s[2] for s in states), max(s[4] for s in states))
    return out


def carried(
    conn: Connection, meter: int, before: int, subjects: Sequence[str], corrected: Sequence[str] = ()
) -> list[BucketState]:
    """Per series, its last reading before ``before`` (epoch seconds on a whole minute) as a
    one-reading state: from the hour buckets before its hour and the minute buckets since,
    less the buckets of the ``corrected`` hours (``hour|subject`` keys: their readings that
    count come from the raw events, :func:`latest`)."""
    params: dict[str, Any] = {"m": meter, "h": before - before % HOUR, "b": before}
    where = (
        "meter = {m:UInt64} AND ((level = 3600 AND bucket < {h:Int64})"
        " OR (level = 60 AND bucket >= {h:Int64} AND bucket < {b:Int64}))"
    )
    if subjects:
        params["s"] = sorted(set(subjects))
        where += " AND has({s:Array(String)}, subject)"
    if corrected:
        params["cx"] = list(corrected)
        where += f" AND NOT has({{cx:Array(String)}}, {hour_key('bucket')})"
    sql = f"SELECT subject, group_key, max(last_at) FROM usage_gauges WHERE {where} GROUP BY subject, group_key"
    return [point_state(subject, group, _point(last)) for subject, group, last in conn.rows(sql, params)]


def latest(states: Iterable[BucketState]) -> list[BucketState]:
    """Per series, the one of ``states`` with the latest last reading."""
    out: dict[Series, BucketState] = {}
    for s in states:
        assert s.latest is not None
        known = out.get((s.subject, s.group_key))
        if known is None or (known.latest is not None and known.latest[:2] < s.latest[:2]):
            out[(s.subject, s.group_key)] = s
    return list(out.values())


def recomputed(
    interleaved: Iterable[tuple[str, str, int]],
    level: int,
    read: Callable[[list[tuple[int, int]]], list[LedgerEntry]],
    points: Callable[[list[LedgerEntry]], list[BucketState]],
) -> list[BucketState]:
    """The readings of the interleaved (series, bucket)s, one state each, from the raw events
    (``read``: the entries of time ranges the rollups reflect; ``points``: their readings)."""
    wanted = {(s, g, b) for s, g, b in interleaved}
    if not wanted:
        return []
    ranges = sorted({(b * 1_000_000, (b + level) * 1_000_000) for _, _, b in wanted})
    out = []
    for state in points(read(ranges)):
        assert state.first is not None
        second = state.first[0] // 1_000_000
        if (state.subject, state.group_key, second - second % level) in wanted:
            out.append(state)
    return out


def _point(last: Sequence[Any]) -> tuple[int, int, Decimal]:
    return int(last[0]), int(last[1]), in_stored_form(last[2])
