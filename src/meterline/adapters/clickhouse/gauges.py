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
(``gauges.join``), which is exact — in ClickHouse, which also integrates each series that
needs nothing from the raw events per window (:func:`integrated`), else in Python
(:func:`read_states`). When they interleave — a late reading inside a bucket a
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
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.corrections import hour_key
from meterline.domain.decimals import EXACT, in_stored_form
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


SAFE = 1e37
"""Above this magnitude (in level x µs) a sum of ``Decimal256(38)`` terms could leave the
type's range, where ClickHouse's decimal arithmetic wraps without an error: such a query is
integrated in Python instead."""
_MIN = "toInt64(-9223372036854775808)"
_MAX = "toInt64(9223372036854775807)"


@dataclass(frozen=True, slots=True)
class WindowSql:
    """A query's windows in SQL: the window (0-based) of a bucket, and window ``j``'s first
    and end µs (the exact ``from``/``to`` at the ends), with their parameters."""

    index: Callable[[str], str]
    start: str
    stop: str
    params: dict[str, Any]
    live: int
    """Windows that start before now (the integral stops at now)."""


def window_sql(bounds: Sequence[int], windows_us: Sequence[int], step: int | None, now_us: int) -> WindowSql | None:
    """:class:`WindowSql` of a grid: by arithmetic for windows of one length (``step``), else
    from the boundaries as array parameters (None when there are too many of them)."""
    live = sum(1 for start in windows_us[:-1] if start < now_us)
    first = {"wu0": windows_us[0]}
    if step:
        params = {**first, "gw1": bounds[1], "gws": step, "gun": windows_us[-1], "gn": len(bounds) - 1}
        return WindowSql(
            lambda b: f"if({b} < {{gw1:Int64}}, 0, 1 + intDiv({b} - {{gw1:Int64}}, {{gws:Int64}}))",
            "if(j = 0, {wu0:Int64}, ({gw1:Int64} + (j - 1) * {gws:Int64}) * 1000000)",
            "if(j + 1 = {gn:Int64}, {gun:Int64}, ({gw1:Int64} + j * {gws:Int64}) * 1000000)",
            params,
            live,
        )
    if len(bounds) > MAX_BOUNDS_IN_SQL:
        return None
    return WindowSql(
        lambda b: f"toInt64(arrayFirstIndex(x -> x > {b}, {{gb:Array(Int64)}})) - 2",
        "arrayElement({gu:Array(Int64)}, j + 1)",
        "arrayElement({gu:Array(Int64)}, j + 2)",
        {**first, "gb": list(bounds), "gu": list(windows_us)},
        live,
    )


MAX_BOUNDS_IN_SQL = 2000
"""Grids up to this many boundaries (or of windows of one length, any number) are merged into
windows by ClickHouse; others per bucket."""


@dataclass(slots=True)
class Integrated:
    """What :func:`integrated` read: the integral of every series that needs nothing from the
    raw events, per (window, subject or '', group key or '[]'), and the joined bucket states
    of the others (``dirty``) with the buckets whose batches interleave."""

    values: list[tuple[int, str, str, Decimal]] = field(default_factory=list)
    states: list[BucketState] = field(default_factory=list)
    interleaved: list[tuple[str, str, int]] = field(default_factory=list)
    dirty_subjects: set[str] = field(default_factory=set)
    """The subjects every series of which was left to Python."""


def integrated(
    conn: Connection,
    selected: tuple[str, dict[str, Any]],
    meter: int,
    grid: WindowSql,
    kept: tuple[str, str],
    dirty: Iterable[str],
    before: int,
    now_us: int,
) -> Integrated | None:
    """TIME_WEIGHTED_SUM of the states ``selected`` (the query's buckets) integrated in ClickHouse.

    Per series (subject, group key), in (first reading) order, with its carry first (the last
    reading before ``before``, as :func:`carried` reads it) — one pass of window functions:

    1. a row whose previous row is of the same bucket and ends at or after its first reading
       interleaves (:func:`~meterline.domain.meters.gauges.join` would refuse the pair);
    2. a series is *dirty* when a bucket of it interleaves or its subject is one of ``dirty``
       (readings of it come from the raw events: corrected hours, partial minutes). A dirty
       series' rows are joined per bucket (count, area plus the gaps between its rows, first,
       last) and returned as states for the integration in Python, with its interleaving buckets;
    3. every other series is integrated here, exactly as ``gauges.integrate`` integrates its
       joined bucket states: each row adds its area to its window; its last level holds up to
       the next row's first reading — wholly when that row is of the same bucket (the join's
       gap), else split over the windows between and cut at now; after the last row, up to
       the range's end or now; a bucket whose first reading is at or after now does not count;
       a window gets a row from the series' first reading on. The sums are exact
       decimals in level x µs, grouped by window and the ``kept`` subject and group columns.

    None when a sum could leave the decimal type's range (see :data:`SAFE`)."""
    where, params = selected
    params = {**params, **grid.params, "dx": sorted(set(dirty)), "now": now_us, "nw": grid.live}
    params.update({"cm": meter, "ch": before - before % HOUR, "cb": before})
    carry_where = (
        "meter = {cm:UInt64} AND ((level = 3600 AND bucket < {ch:Int64})"
        " OR (level = 60 AND bucket >= {ch:Int64} AND bucket < {cb:Int64}))"
    )
    if "s" in params:
        carry_where += " AND has({s:Array(String)}, subject)"
    subject, group = kept
    k, next_k = grid.index("bucket"), grid.index("next_bucket")
    gap = f"greatest(least(b_, least({grid.stop}, {{now:Int64}})) - greatest(a_, {grid.start}), 0)"
    held = f"if(same_next, next_first - last_at.1, {gap})"  # µs the row's last level holds in window j
    sql = f"""
SELECT d, s_, g_, j, sum(count), sum(v), min(first_at), max(last_at), max(il), sum(mag) FROM (
  SELECT d, if(d, subject, {subject}) AS s_, if(d, group_key, {group}) AS g_, count, first_at, last_at, il,
    arrayJoin(if(d, [bucket], arrayMap(x -> toInt64(x), range(toUInt64(greatest(k_, 0)),
      toUInt64(greatest(kto, -1) + 1))))) AS j,
    if(d, area * 1000000 + if(joins, prev_last.3 * (first_at.1 - prev_last.1), 0),
       last_at.3 * {held} + if(j = k_, area * 1000000, 0)) AS v,
    if(d, abs(toFloat64(area)) * 1e6 + if(joins, abs(toFloat64(prev_last.3)) * (first_at.1 - prev_last.1), 0),
       abs(toFloat64(last_at.3)) * {held} + if(j = k_, abs(toFloat64(area)) * 1e6, 0)) AS mag
  FROM (
    SELECT *, max(il) OVER (PARTITION BY subject, group_key) OR has({{dx:Array(String)}}, subject) AS d,
      max(if(joins, {_MIN}, first_at.1)) OVER (PARTITION BY subject, group_key ORDER BY first_at
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS bucket_first,
      if(carry, -1, {k}) AS k_, NOT carry AND next_bucket = bucket AS same_next,
      same_next OR next_first < {{now:Int64}} AS has_next,
      if(same_next, k_, if(has_next, {next_k}, {{nw:Int64}} - 1)) AS kto,
      if(carry, {{wu0:Int64}}, last_at.1) AS a_, if(has_next, next_first, {_MAX}) AS b_
    FROM (
      SELECT *, carry = 0 AND prev_bucket = bucket AS joins,
        joins AND (prev_last.1, prev_last.2) >= first_at AS il
      FROM (
        SELECT *, lagInFrame(bucket, 1, {_MIN}) OVER w AS prev_bucket, lagInFrame(last_at) OVER w AS prev_last,
          leadInFrame(first_at.1, 1, {_MAX}) OVER w AS next_first, leadInFrame(bucket, 1, {_MIN}) OVER w AS next_bucket
        FROM (
          SELECT subject, group_key, bucket, count, area, first_at, last_at, toUInt8(0) AS carry
          FROM usage_gauges WHERE {where}
          UNION ALL
          SELECT subject, group_key, {_MIN}, toUInt64(0), toDecimal256(0, 38), (m.1, m.2), m, toUInt8(1)
          FROM (SELECT subject, group_key, max(last_at) AS m FROM usage_gauges WHERE {carry_where}
                GROUP BY subject, group_key)
        )
        WINDOW w AS (PARTITION BY subject, group_key ORDER BY first_at ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING)
      )
    )
  )
  WHERE d AND NOT carry OR NOT d AND bucket_first < {{now:Int64}}
)
GROUP BY d, s_, g_, j"""
    out = Integrated(dirty_subjects=set(params["dx"]))
    for d, s, g, j, count, v, first, last, il, mag in conn.rows(sql, params):
        if mag >= SAFE:
            return None
        total = in_stored_form(Decimal(v).scaleb(-6, EXACT))
        if not d:
            out.values.append((int(j), s, g, total))
        elif il:
            out.interleaved.append((s, g, int(j)))
        else:
            first_at = (int(first[0]), int(first[1]))
            out.states.append(BucketState(s, g, int(j), int(count), total, None, None, _point(last), first_at))
    return out


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
