"""Exact answers for any ``from``/``to``: whole minutes from the rollups, partial edges from the ledger.

Rollups are kept per minute, so a range that starts or ends inside a minute is answered in two
parts that never overlap:

1. the whole minutes inside the range come from the rollups as for any aligned query
   (:func:`inner_bounds`: the window grid with its first and last boundary moved onto the
   whole minute inside the range);
2. the partial minute at each end (at most two ranges of under a minute each,
   :func:`edge_ranges`) is folded from the ledger's events (:func:`edge_states`,
   :func:`edge_uniques`), read through the meter as the aggregator reads them.

Both parts are merged per window exactly as bucket states are (``query.merge``); only the
first window's start and the last window's end are then labelled with the exact ``from`` and
``to`` (:func:`relabel`). A storage adapter supplies the ledger entries of the edge ranges that
its rollups reflect (nothing past the aggregator's offset, and only group values the rollups
admitted), so both parts describe the same ledger prefix.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from meterline.domain.events.model import Event, Rejection
from meterline.domain.meters.evaluate import CompiledMeter, Reading
from meterline.domain.meters.fold import LedgerEntry, event_data
from meterline.domain.meters.gauges import point_state
from meterline.domain.meters.model import Aggregation, Meter
from meterline.domain.meters.query import BucketState, MeterQuery, Row, merge, merge_sketches, merge_unique

MINUTE_US = 60_000_000


def floor_minute(us: int) -> int:
    """The whole minute (epoch seconds) at or before ``us``."""
    return us // MINUTE_US * 60


def ceil_minute(us: int) -> int:
    """The whole minute (epoch seconds) at or after ``us``."""
    return -(-us // MINUTE_US) * 60


def exact_query(start_us: int | None, end_us: int | None, **members: Any) -> MeterQuery:
    """A query over any ``[start_us, end_us)`` (``None``: open): the whole minutes around it,
    and the exact ends where they are not on a whole minute; ``members`` are the rest."""
    return MeterQuery(
        start=None if start_us is None else floor_minute(start_us),
        end=None if end_us is None else ceil_minute(end_us),
        start_us=None if start_us is None or start_us % MINUTE_US == 0 else start_us,
        end_us=None if end_us is None or end_us % MINUTE_US == 0 else end_us,
        **members,
    )


def inner_bounds(query: MeterQuery, bounds: Sequence[int]) -> tuple[int, ...]:
    """The boundaries to read the rollups with: ``bounds`` (the whole-minute grid around the
    range) with an unaligned first/last boundary moved onto the whole minute inside the range.
    A window with no whole minute inside gets an empty range (its two boundaries meet, or
    cross when the whole range lies within one minute)."""
    inner = list(bounds)
    if query.start_us is not None:
        inner[0] = ceil_minute(query.start_us)
    if query.end_us is not None:
        inner[-1] = floor_minute(query.end_us)
    return tuple(inner)


def edge_ranges(query: MeterQuery, bounds: Sequence[int]) -> list[tuple[int, int]]:
    """The partial minutes, ``[start_us, end_us)`` each, that the rollups cannot answer."""
    start_us, end_us = query.start_us, query.end_us
    if start_us is not None and end_us is not None and floor_minute(start_us) == floor_minute(end_us):
        return [(start_us, end_us)]
    ranges = []
    if start_us is not None:
        ranges.append((start_us, min(ceil_minute(start_us), bounds[-1]) * 1_000_000))
    if end_us is not None:
        ranges.append((max(floor_minute(end_us), bounds[0]) * 1_000_000, end_us))
    return [(a, b) for a, b in ranges if a < b]


def gauge_edge_ranges(query: MeterQuery, bounds: Sequence[int]) -> list[tuple[int, int]]:
    """:func:`edge_ranges` for TIME_WEIGHTED_SUM: a partial first minute is read from the
    minute's start, since its readings before ``from`` set the level at ``from``."""
    ranges = []
    for a, b in edge_ranges(query, bounds):
        ranges.append((floor_minute(a) * 1_000_000 if a == query.start_us else a, b))
    return ranges


def gauge_points(
    meter: CompiledMeter, entries: Iterable[LedgerEntry], admitted: Callable[[str, str], bool]
) -> list[BucketState]:
    """TIME_WEIGHTED_SUM: each counted edge reading as a one-reading state."""
    out = []
    for e, reading in _readings(meter, entries, admitted):
        assert isinstance(reading.value, Decimal)
        out.append(point_state(e.subject, reading.group_key, (e.time_us, e.seq, reading.value)))
    return out


def _readings(
    meter: CompiledMeter, entries: Iterable[LedgerEntry], admitted: Callable[[str, str], bool]
) -> Iterable[tuple[LedgerEntry, Reading]]:
    """Each entry the meter counts, read as the aggregator reads it (unreadable ones and group
    values the rollups did not admit are skipped there too)."""
    for e in entries:
        event = Event(e.namespace, e.source, "", e.type, e.subject, e.time_us, event_data(e.raw), e.raw, b"")
        if not meter.applies(event):
            continue
        reading = meter.read(event)
        if isinstance(reading, Rejection):
            continue
        groups = zip(meter.dimensions, reading.groups, strict=True)
        if all(value is None or admitted(dim, value) for dim, value in groups):
            yield e, reading


def edge_states(
    meter: CompiledMeter, entries: Iterable[LedgerEntry], admitted: Callable[[str, str], bool]
) -> list[BucketState]:
    """One bucket state per counted edge event, with the fields its aggregation reads; the
    bucket is the event's second, so ``merge`` places it in the window that holds it."""
    out = []
    aggregation = meter.aggregation
    for e, reading in _readings(meter, entries, admitted):
        value = reading.value
        assert value is None or isinstance(value, Decimal)
        total = value if aggregation in (Aggregation.SUM, Aggregation.AVG) else None
        low = value if aggregation is Aggregation.MIN else None
        high = value if aggregation is Aggregation.MAX else None
        latest = (e.time_us, e.seq, value) if aggregation is Aggregation.LATEST and value is not None else None
        out.append(BucketState(e.subject, reading.group_key, e.time_us // 1_000_000, 1, total, low, high, latest))
    return out


def edge_uniques(
    meter: CompiledMeter, entries: Iterable[LedgerEntry], admitted: Callable[[str, str], bool]
) -> list[tuple[str, str, int, str]]:
    """UNIQUE_COUNT: (subject, group key, second, value) of each counted edge event."""
    return [
        (e.subject, reading.group_key, e.time_us // 1_000_000, str(reading.value))
        for e, reading in _readings(meter, entries, admitted)
    ]


def exact_rows(
    meter: Meter,
    query: MeterQuery,
    bounds: Sequence[int],
    rollups: Iterable[Any],
    edges: Iterable[LedgerEntry],
    admitted: Callable[[str, str], bool],
) -> list[Row]:
    """The answer: the rollups' states (or UNIQUE_COUNT values) read over :func:`inner_bounds`
    merged per window with the edge entries' (the ledger entries of :func:`edge_ranges` that
    the rollups reflect), with the first and last window labelled exactly."""
    dimensions = tuple(sorted(meter.spec.group_by))
    compiled = CompiledMeter(meter)
    if meter.spec.aggregation is Aggregation.UNIQUE_COUNT:
        values = itertools.chain(rollups, edge_uniques(compiled, edges, admitted))
        return relabel(merge_unique(values, bounds, query, dimensions), query, bounds)
    if meter.spec.aggregation is Aggregation.APPROX_UNIQUE_COUNT:  # rollups: the values themselves
        values = itertools.chain(rollups, edge_uniques(compiled, edges, admitted))
        return relabel(merge_sketches((), values, bounds, query, dimensions), query, bounds)
    states = itertools.chain(rollups, edge_states(compiled, edges, admitted))
    return relabel(merge(meter.spec.aggregation, states, bounds, query, dimensions), query, bounds)


def in_edges(query: MeterQuery, ranges: Sequence[tuple[int, int]], entry: LedgerEntry) -> bool:
    """Whether ``entry`` (of the meter's namespace and event type) is one of the query's
    subjects' within an edge range."""
    if query.subjects and entry.subject not in query.subjects:
        return False
    return any(a <= entry.time_us < b for a, b in ranges)


def relabel(rows: list[Row], query: MeterQuery, bounds: Sequence[int]) -> list[Row]:
    """The first window starts at the exact ``from``, the last ends at the exact ``to``."""
    if query.start_us is None and query.end_us is None:
        return rows
    out = []
    for row in rows:
        if query.start_us is not None and row.window_start == bounds[0]:
            row = dataclasses.replace(row, start_us=query.start_us)
        if query.end_us is not None and row.window_end == bounds[-1]:
            row = dataclasses.replace(row, end_us=query.end_us)
        out.append(row)
    return out
