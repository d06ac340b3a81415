"""Meter queries: the input, the answer, and how bucket states merge into windows.

Storage hands over bucket states (one per meter, subject, group and bucket); this module
merges them into the windows of a grid. Merging is exact: sums use the exact Decimal context,
AVG divides once per window, LATEST keeps the value with the greatest (event time, ledger
sequence), UNIQUE_COUNT counts distinct values over the whole window.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from meterline.domain.bounded import BoundedCache
from meterline.domain.decimals import add, average, in_stored_form
from meterline.domain.errors import InvalidInput
from meterline.domain.meters.model import Aggregation
from meterline.domain.meters.sketch import Histogram, Sketch
from meterline.domain.meters.windows import WindowSize, floor, grid

SUBJECT = "subject"


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """How large one answer to a caller's query may grow (the ``[query]`` settings)."""

    max_windows: int = 50_000
    """Most windows one answer is cut into (400 ``too_many_windows`` beyond)."""
    max_rows: int = 50_000
    """Most rows an answer may hold or read from the rollups (400 ``too_many_rows`` beyond)."""


class TooManyRows(InvalidInput):
    """A query would hold more rows than one answer may."""

    code = "too_many_rows"
    title = "Query too large"


def too_many_rows(limit: int) -> TooManyRows:
    return TooManyRows(
        f"the answer would hold or read more than {limit} rows; ask for a shorter range, a larger windowSize,"
        " fewer groupBy dimensions or a subject filter",
        maxRows=limit,
    )


@dataclass(frozen=True, slots=True)
class MeterQuery:
    """A validated query. Times are epoch seconds; ``None`` means open-ended."""

    start: int | None = None
    end: int | None = None
    window_size: WindowSize | None = None
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    subjects: tuple[str, ...] = ()
    group_by: tuple[str, ...] = ()
    filters: tuple[tuple[str, tuple[str, ...], bool], ...] = ()
    """(dimension, values, negate): keep rows whose value is (not) in ``values``."""
    combine_subjects: bool = False
    """With ``subjects``: one row for all of them (a customer's usage) instead of one per subject."""
    limits: QueryLimits | None = None
    """Set on every query a caller formed; None only for the server's own queries."""
    start_us: int | None = None
    """The exact ``from`` (microseconds) when it is not on a whole minute; ``start`` is then
    the whole minute before it (``domain.meters.edges`` answers the partial minute)."""
    end_us: int | None = None
    """The exact ``to`` (microseconds) when it is not on a whole minute; ``end`` is then the
    whole minute after it."""


@dataclass(frozen=True, slots=True)
class Row:
    window_start: int
    window_end: int
    subject: str | None
    group_by: dict[str, str | None]
    value: Decimal
    start_us: int | None = None
    """The window's exact start when it is not a whole second (an unaligned ``from``)."""
    end_us: int | None = None
    """The window's exact end when it is not a whole second (an unaligned ``to``)."""

    @property
    def window_start_us(self) -> int:
        return self.window_start * 1_000_000 if self.start_us is None else self.start_us

    @property
    def window_end_us(self) -> int:
        return self.window_end * 1_000_000 if self.end_us is None else self.end_us


@dataclass(frozen=True, slots=True)
class BucketState:
    """One rollup bucket as storage keeps it. Decimal fields are None where the aggregation
    does not track them."""

    subject: str
    group_key: str
    bucket: int
    count: int
    total: Decimal | None
    low: Decimal | None
    high: Decimal | None
    latest: tuple[int, int, Decimal] | None
    first: tuple[int, int] | None = None
    """TIME_WEIGHTED_SUM: the (time, seq) of the bucket's first reading; ``latest`` is its last
    and ``total`` the integral between them (``domain.meters.gauges``)."""


def query_grid(query: MeterQuery, now_us: int, first_bucket: Callable[[], int | None]) -> tuple[int, ...]:
    """The window boundaries a query covers (empty: nothing to answer). An open ``end`` is the
    end of the current minute; an open ``start`` the window holding the meter's first stored
    bucket (``first_bucket``: None when it has no data)."""
    start, end = query.start, query.end
    if end is None:
        now = now_us // 1_000_000
        end = now - now % 60 + 60
    if start is None:
        first = first_bucket()
        if first is None:
            return ()
        start = floor(first, query.window_size, query.tz) if query.window_size else first
    limits = query.limits
    return grid(start, end, query.window_size, query.tz, None if limits is None else limits.max_windows)


def check_dimensions(query: MeterQuery, dimensions: Sequence[str]) -> None:
    known = set(dimensions) | {SUBJECT}
    for name in list(query.group_by) + [f[0] for f in query.filters]:
        if name not in known:
            raise InvalidInput(
                f"{name!r} is not a groupBy dimension of this meter (it has: {', '.join(sorted(known))})",
                code="invalid_group_by",
            )


def _decode_groups(group_key: str) -> tuple[str | None, ...]:
    return tuple(msgspec.json.decode(group_key))


# group keys come from event data: bounded by their total length, not only their number
_GROUPS: BoundedCache[str, tuple[str | None, ...]] = BoundedCache(65536, 16 << 20, lambda g: 64 + 8 * len(g))
group_values = _GROUPS.memo(_decode_groups)
"""The values of a stored group key (a JSON array, one value per dimension in name order)."""


class Shaper:
    """Maps a bucket's (subject, group) to the output key, applying filters."""

    def __init__(self, query: MeterQuery, dimensions: Sequence[str]) -> None:
        index = {name: i for i, name in enumerate(dimensions)}
        self.by_subject = SUBJECT in query.group_by or (bool(query.subjects) and not query.combine_subjects)
        self.picked = tuple(d for d in query.group_by if d != SUBJECT)
        self._pick = tuple(index[d] for d in self.picked)
        self._filters = tuple((index.get(d), frozenset(v), neg) for d, v, neg in query.filters)

    def key(self, subject: str, group_key: str) -> tuple[Any, ...] | None:
        if not self._filters and not self._pick:  # the group is not looked at: not decoded
            return (subject if self.by_subject else None, ())
        groups = group_values(group_key)
        for i, values, negate in self._filters:
            value = subject if i is None else groups[i]
            if (value in values) == negate:
                return None
        return (subject if self.by_subject else None, tuple(groups[i] for i in self._pick))


def merge(
    aggregation: Aggregation,
    states: Iterable[BucketState],
    bounds: Sequence[int],
    query: MeterQuery,
    dimensions: Sequence[str],
) -> list[Row]:
    """Merge bucket states into one row per window, subject (if grouped) and group."""
    shaper = Shaper(query, dimensions)
    cap = row_cap(query)
    acc: dict[tuple[Any, ...], list[Any]] = {}
    for s in states:
        key = shaper.key(s.subject, s.group_key)
        if key is None:
            continue
        w = bisect.bisect_right(bounds, s.bucket) - 1
        slot = acc.get((w, *key))
        if slot is None:
            if len(acc) >= cap:
                raise too_many_rows(cap)
            acc[(w, *key)] = [s.count, s.total, s.low, s.high, s.latest]
        else:
            _combine(slot, s)
    return _rows(aggregation, acc, bounds, shaper.picked)


def folded_rows(
    aggregation: Aggregation, states: Sequence[BucketState], bounds: Sequence[int], query: MeterQuery
) -> list[Row] | None:
    """What :func:`merge` gives for states that storage already folded into one per window
    (``bucket``: the window's start) and subject, for a query split by subject alone (no
    group values, no filters, subjects not combined): one row per state, without merging
    them again; None when the query asks for more than that."""
    if query.filters or query.combine_subjects or any(d != SUBJECT for d in query.group_by):
        return None
    if SUBJECT not in query.group_by and not query.subjects:
        return None
    cap = row_cap(query)
    if len(states) > cap:
        raise too_many_rows(cap)
    ends = dict(itertools.pairwise(bounds))
    out = []
    for s in sorted(states, key=lambda s: (s.bucket, s.subject)):
        value = _final(aggregation, [s.count, s.total, s.low, s.high, s.latest])
        out.append(Row(s.bucket, ends[s.bucket], s.subject, {}, value))
    return out


def _combine(slot: list[Any], s: BucketState) -> None:
    slot[0] += s.count
    if s.total is not None:
        slot[1] = add(slot[1], s.total)
    if s.low is not None and s.low < slot[2]:
        slot[2] = s.low
    if s.high is not None and s.high > slot[3]:
        slot[3] = s.high
    if s.latest is not None and s.latest[:2] > slot[4][:2]:
        slot[4] = s.latest


def _rows(
    aggregation: Aggregation, acc: dict[tuple[Any, ...], list[Any]], bounds: Sequence[int], picked: Sequence[str]
) -> list[Row]:
    rows = []
    for (w, subject, groups), slot in sorted(acc.items(), key=row_order):
        value = _final(aggregation, slot)
        rows.append(Row(bounds[w], bounds[w + 1], subject, dict(zip(picked, groups, strict=True)), value))
    return rows


def row_order(item: tuple[tuple[Any, ...], Any]) -> tuple[Any, ...]:
    w, subject, groups = item[0]
    return (w, subject or "", tuple(g or "" for g in groups))


def _final(aggregation: Aggregation, slot: list[Any]) -> Decimal:
    count: int = slot[0]
    total: Decimal = slot[1]
    low: Decimal = slot[2]
    high: Decimal = slot[3]
    latest: tuple[int, int, Decimal] = slot[4]
    if aggregation is Aggregation.COUNT:
        return Decimal(count)
    if aggregation is Aggregation.SUM:
        return in_stored_form(total)
    if aggregation is Aggregation.AVG:
        return average(in_stored_form(total), count)
    if aggregation is Aggregation.MIN:
        return low
    if aggregation is Aggregation.MAX:
        return high
    return latest[2]


def merge_unique(
    values: Iterable[tuple[str, str, int, str]],
    bounds: Sequence[int],
    query: MeterQuery,
    dimensions: Sequence[str],
) -> list[Row]:
    """UNIQUE_COUNT: distinct values per window from (subject, group_key, bucket, value) rows."""
    shaper = Shaper(query, dimensions)
    cap = row_cap(query)
    seen: dict[tuple[Any, ...], set[str]] = {}
    for subject, group_key, bucket, value in values:
        key = shaper.key(subject, group_key)
        if key is None:
            continue
        w = bisect.bisect_right(bounds, bucket) - 1
        bucket_values = seen.get((w, *key))
        if bucket_values is None:
            if len(seen) >= cap:
                raise too_many_rows(cap)
            bucket_values = seen[(w, *key)] = set()
        bucket_values.add(value)
    acc = {k: [len(v), None, None, None, None] for k, v in seen.items()}
    return _rows(Aggregation.COUNT, acc, bounds, shaper.picked)


def merge_sketches(
    sketches: Iterable[tuple[str, str, int, bytes | Sketch | Histogram]],
    values: Iterable[tuple[str, str, int, str]],
    bounds: Sequence[int],
    query: MeterQuery,
    dimensions: Sequence[str],
) -> list[Row]:
    """APPROX_UNIQUE_COUNT: per window, the estimate of the union of the stored bucket sketches
    (subject, group_key, bucket, sketch: stored bytes, a read sketch, or the histogram of a
    sketch the store already merged for the whole window) and of the edge values (as
    :func:`merge_unique`). A histogram must be its window's only part: when anything else falls
    into the same window, :class:`Unmergeable` is raised (read the registers instead)."""
    shaper = Shaper(query, dimensions)
    cap = row_cap(query)
    acc: dict[tuple[Any, ...], Sketch | Histogram] = {}

    def slot(subject: str, group_key: str, bucket: int) -> tuple[tuple[Any, ...], Sketch | None] | None:
        key = shaper.key(subject, group_key)
        if key is None:
            return None
        w = bisect.bisect_right(bounds, bucket) - 1
        found = acc.get((w, *key))
        if found is None and len(acc) >= cap:
            raise too_many_rows(cap)
        if isinstance(found, Histogram):
            raise Unmergeable("a window's histogram cannot take more values")
        return (w, *key), found

    for subject, group_key, bucket, blob in sketches:
        into = slot(subject, group_key, bucket)
        if into is None:
            continue
        if isinstance(blob, Histogram):
            if into[1] is not None:
                raise Unmergeable("a window's histogram cannot take more values")
            acc[into[0]] = blob
            continue
        sketch = blob if isinstance(blob, Sketch) else Sketch.from_bytes(blob)
        if into[1] is None:  # a window's first sketch is its union so far (a copy: the caller's stays)
            acc[into[0]] = sketch.copy()
        else:
            into[1].merge(sketch)
    for subject, group_key, bucket, value in values:
        into = slot(subject, group_key, bucket)
        if into is not None:
            found = acc[into[0]] = into[1] if into[1] is not None else Sketch()
            found.add(value)
    counts = {k: [s.estimate(), None, None, None, None] for k, s in acc.items()}
    return _rows(Aggregation.COUNT, counts, bounds, shaper.picked)


class Unmergeable(Exception):
    """A window's sketch came as a :class:`Histogram` together with more of its values (a store
    that merges windows itself reads the registers instead; never reaches a client)."""


def row_cap(query: MeterQuery) -> int:
    return 2**63 if query.limits is None else query.limits.max_rows
