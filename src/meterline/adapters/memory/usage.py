"""The usage store in memory (``ports.usage.UsageStore``): rollups in dicts, with the offset.

Guarantees of :meth:`MemoryUsage.apply`, all under one lock:

1. it checks that the stored offset is still ``batch.start`` (the live offset, or the meter's
   backfill offset) and, for the live offset, that the live meters are still the ones the batch
   was computed for; otherwise it writes nothing and answers False;
2. it merges the batch's folded deltas, group values and subjects, and moves the offset to
   ``batch.end`` — so a reader never sees one without the other.

Meters come from the catalog (``meters``: every live meter of every namespace). A meter first
seen here is given a backfill offset ``(0, live offset]``, as the SQLite store does when the
meter is created (a live batch computed without it is refused, so no entry is missed or
applied twice); a meter gone from the catalog loses its usage. The live batches' entries are
kept too, so the partial minutes of a range are answered exactly (``domain.meters.edges``). Quantities are kept in the
form rollups store them (``domain.decimals.stored``), so answers read like the SQLite ones.
Unlike the SQLite store, no committed-usage stream is fed (there are no listeners here).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from meterline.domain.decimals import in_stored_form
from meterline.domain.meters.edges import edge_ranges, exact_rows, in_edges, inner_bounds, relabel
from meterline.domain.meters.fold import Fold, LedgerEntry, merge_state
from meterline.domain.meters.gauges import GaugeRows, Point, point_state, windows_us
from meterline.domain.meters.model import Aggregation, Meter, counts_type
from meterline.domain.meters.query import (
    BucketState,
    MeterQuery,
    Row,
    check_dimensions,
    query_grid,
)
from meterline.domain.meters.windows import bucket_size
from meterline.ports.usage import Backfill, Batch, Snapshot

__all__ = ["MemoryUsage"]

_Bucket = tuple[int, str, int, str]
"""(level, subject, bucket start, group key)."""
_HOUR = 3600


class _Rollups:
    """One meter's usage: bucket states, UNIQUE_COUNT values, group values and subjects."""

    def __init__(self) -> None:
        self.states: dict[_Bucket, list[Any]] = {}
        self.uniques: set[tuple[int, str, int, str, str]] = set()
        self.gauges: dict[tuple[str, str], list[Point]] = {}
        """TIME_WEIGHTED_SUM: every applied reading per series (subject, group key), in time
        order; a window is integrated from them directly (``domain.meters.gauges``)."""

    def first_bucket(self) -> int | None:
        hours = [k[2] for k in self.states if k[0] == _HOUR] + [u[2] for u in self.uniques if u[0] == _HOUR]
        hours += [points[0][0] // 1_000_000 // _HOUR * _HOUR for points in self.gauges.values()]
        return min(hours, default=None)


class MemoryUsage:
    def __init__(self, meters: Callable[[], Sequence[Meter]], now_us: Callable[[], int]) -> None:
        self._meters = meters
        self._now_us = now_us
        self._lock = threading.Lock()
        self._offset = 0
        self._live: dict[int, Meter] = {}
        self._backfill: dict[int, tuple[int, int]] = {}
        self._rollups: dict[int, _Rollups] = {}
        self._groups: dict[tuple[int, str], set[str]] = {}
        self._subjects: dict[int, set[str]] = {}
        self._raw: list[LedgerEntry] = []
        """The live batches' entries: the partial minutes of a range are answered from them."""

    def snapshot(self) -> Snapshot:
        """Copies: the aggregator's replay adds to the snapshot's sets."""
        with self._lock:
            self._sync()
            return Snapshot(
                self._offset,
                [self._live[k] for k in sorted(self._live)],
                {k: set(v) for k, v in self._groups.items()},
                {k: set(v) for k, v in self._subjects.items()},
                [Backfill(k, d, t) for k, (d, t) in sorted(self._backfill.items()) if d < t],
            )

    def apply(self, batch: Batch) -> bool:
        with self._lock:
            self._sync()
            if not self._current(batch):
                return False
            self._write(batch)
            if batch.backfill is not None:
                self._backfill[batch.backfill] = (batch.end, self._backfill[batch.backfill][1])
            else:
                self._raw.extend(batch.entries)
                self._offset = batch.end
            return True

    def query(self, meter: Meter, query: MeterQuery) -> list[Row]:
        """Whole minutes from the rollups, a partial first or last minute from the live
        batches' entries that the rollups reflect (``domain.meters.edges``)."""
        check_dimensions(query, tuple(sorted(meter.spec.group_by)))
        with self._lock:
            self._sync()
            rollups = self._rollups.get(meter.key, _Rollups())
            bounds = query_grid(query, self._now_us(), rollups.first_bucket)
            if not bounds:
                return []
            if meter.spec.aggregation is Aggregation.TIME_WEIGHTED_SUM:
                return relabel(_gauge_rows(meter, rollups, query, bounds, self._now_us()), query, bounds)
            inner = inner_bounds(query, bounds)
            level = bucket_size(inner)
            read: list[Any]
            if meter.spec.aggregation in (Aggregation.UNIQUE_COUNT, Aggregation.APPROX_UNIQUE_COUNT):
                read = [(s, g, b, v) for lv, s, b, g, v in rollups.uniques if _within(lv, s, b, level, inner, query)]
            else:
                read = list(_states(meter.spec.aggregation, rollups, level, inner, query))
            edges = self._edges(meter, query, bounds)
            groups = {dim: set(self._groups.get((meter.key, dim), ())) for dim in meter.spec.group_by}
        return exact_rows(meter, query, bounds, read, edges, lambda dim, value: value in groups.get(dim, ()))

    def _edges(self, meter: Meter, query: MeterQuery, bounds: Sequence[int]) -> list[LedgerEntry]:
        ranges = edge_ranges(query, bounds)
        if not ranges:
            return []
        done, to = self._backfill.get(meter.key, (0, 0))  # entries still to backfill are not in the rollups
        return [
            e
            for e in self._raw
            if e.namespace == meter.namespace
            and counts_type(meter.spec, e.type)
            and not done < e.seq <= to
            and in_edges(query, ranges, e)
        ]

    def _sync(self) -> None:
        """Follow the catalog: new meters start their backfill at the live offset, deleted
        ones lose their usage."""
        live = {m.key: m for m in self._meters()}
        for key in self._live.keys() - live.keys():
            self._backfill.pop(key, None)
            self._rollups.pop(key, None)
            self._subjects.pop(key, None)
            for dim_key in [k for k in self._groups if k[0] == key]:
                del self._groups[dim_key]
        for key in live.keys() - self._live.keys():
            self._backfill[key] = (0, self._offset)
        self._live = live

    def _current(self, batch: Batch) -> bool:
        if batch.backfill is not None:
            done = self._backfill.get(batch.backfill)
            return done is not None and done[0] == batch.start
        return self._offset == batch.start and set(self._live) == batch.meters

    def _write(self, batch: Batch) -> None:
        replay = batch.replay
        _merge_fold(self._rollups, replay.fold)
        for key, dim, value in replay.new_groups:
            self._groups.setdefault((key, dim), set()).add(value)
        for key, subject in replay.new_subjects:
            self._subjects.setdefault(key, set()).add(subject)
        replay.new_groups.clear()
        replay.new_subjects.clear()


def _merge_fold(into: dict[int, _Rollups], fold: Fold) -> None:
    """Merge a fold's deltas into the stored states (then clear it, as a store that wrote it)."""
    for (meter, _, subject, _, group), points in fold.gauges.items():
        series = into.setdefault(meter, _Rollups()).gauges.setdefault((subject, group), [])
        for point in points:
            bisect.insort(series, (point[0], point[1], in_stored_form(point[2])))
    fold.gauges.clear()
    for states in fold.levels().values():
        for (meter, level, subject, bucket, group), slot in states.items():
            rollups = into.setdefault(meter, _Rollups())
            key = (level, subject, bucket, group)
            current = rollups.states.get(key)
            if current is None:
                rollups.states[key] = _canonical(list(slot))
            else:
                merge_state(current, slot)
                _canonical(current)
    for meter, level, subject, bucket, group, value in (*fold.uniques, *fold.sketched):
        # APPROX_UNIQUE_COUNT keeps its values here too: a sketch of a set of values is a
        # function of the set, so answering from them equals the stored sketches' answer
        into.setdefault(meter, _Rollups()).uniques.add((level, subject, bucket, group, value))
    fold.clear()


def _canonical(slot: list[Any]) -> list[Any]:
    """Quantities in the form rollups store them (an integer or canonical text)."""
    if slot[1] is not None:
        slot[1:4] = [in_stored_form(v) for v in slot[1:4]]
        slot[4] = (slot[4][0], slot[4][1], in_stored_form(slot[4][2]))
    return slot


def _within(level: int, subject: str, bucket: int, want: int, bounds: Sequence[int], query: MeterQuery) -> bool:
    if level != want or not bounds[0] <= bucket < bounds[-1]:
        return False
    return not query.subjects or subject in query.subjects


def _states(
    aggregation: Aggregation, rollups: _Rollups, level: int, bounds: Sequence[int], query: MeterQuery
) -> Iterator[BucketState]:
    for (lv, subject, bucket, group), s in rollups.states.items():
        if not _within(lv, subject, bucket, level, bounds, query):
            continue
        yield BucketState(
            subject,
            group,
            bucket,
            s[0],
            s[1] if aggregation in (Aggregation.SUM, Aggregation.AVG) else None,
            s[2] if aggregation is Aggregation.MIN else None,
            s[3] if aggregation is Aggregation.MAX else None,
            s[4] if aggregation is Aggregation.LATEST else None,
        )


def _gauge_rows(meter: Meter, rollups: _Rollups, query: MeterQuery, bounds: Sequence[int], now_us: int) -> list[Row]:
    """TIME_WEIGHTED_SUM from the readings themselves: each series' readings before the end of
    the range (those before its start carry their level in)."""
    end_us = windows_us(query, bounds)[-1]
    if query.subjects:
        wanted = {key: points for key, points in rollups.gauges.items() if key[0] in query.subjects}
    else:
        wanted = rollups.gauges
    out = GaugeRows(query, bounds, tuple(sorted(meter.spec.group_by)), now_us)
    for (subject, group), points in wanted.items():
        upto = bisect.bisect_left(points, (end_us,))
        out.add(subject, group, [point_state(subject, group, p) for p in points[:upto]])
    return out.rows()
