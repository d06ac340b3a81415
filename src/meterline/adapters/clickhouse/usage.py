"""The usage store on ClickHouse (``ports.usage.UsageStore``).

``apply`` cannot lean on a transaction, so it follows the protocol of :mod:`.progress`, under
one lock per store (one writer per stream):

1. it reads the stream's progress; a batch that does not start at the stored offset, was
   computed for another set of live meters, or does not end where a recorded intent ends, is
   refused (False, nothing written);
2. it records the intent ``(start, end]`` with the meters it covers, unless a crash left one;
3. it inserts the folded rollup states, UNIQUE_COUNT values and new group values / subjects,
   each under the token ``<stream>:<start>-<end>:<table>`` — rows of the meters of the intent
   only, so a batch recomputed after a crash is the same insert and ClickHouse drops what had
   already landed;
4. it records ``done = end``.

A meter first seen gets a backfill stream ``(0, live offset]`` (up to a pending intent's end:
that range is completed without it). A deleted meter answers no usage (its rows stay until
dropped; meter keys are never reused). The snapshot says where a pending intent ends, so the
aggregator recomputes exactly that range.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.progress import Progress, ProgressTable
from meterline.adapters.clickhouse.schema import DIMS, ROLLUPS, UNIQUES, create
from meterline.domain.decimals import in_stored_form
from meterline.domain.errors import InvalidInput, StorageUnavailable
from meterline.domain.meters.fold import Replay
from meterline.domain.meters.model import Aggregation, Meter
from meterline.domain.meters.query import (
    BucketState,
    MeterQuery,
    Row,
    check_dimensions,
    merge,
    merge_unique,
    query_grid,
)
from meterline.domain.meters.windows import bucket_size
from meterline.ports.usage import Backfill, Batch, Snapshot

__all__ = ["ClickHouseUsage", "read_dims", "rollup_rows", "write_usage"]

LIVE = "live"
_HOUR = 3600
_ZERO = Decimal(0)


def _backfill(key: int) -> str:
    return f"backfill:{key}"


class ClickHouseUsage:
    def __init__(
        self,
        conn: Connection,
        meters: Callable[[], Sequence[Meter]],
        now_us: Callable[[], int],
        *,
        dedupe_window: int = 10_000,
        raw_retention_seconds: int | None = None,
    ) -> None:
        self._conn = conn
        self._meters = meters
        self._now_us = now_us
        self._progress = ProgressTable(conn)
        self._lock = threading.Lock()
        create(conn, dedupe_window, raw_retention_seconds)

    # -- the port ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._lock:
            live, progress = self._sync()
            keys = sorted(live)
            groups, subjects = read_dims(self._conn, keys)
            head = progress.get(LIVE, Progress(LIVE))
            backfills = []
            for key in keys:
                b = progress[_backfill(key)]
                if b.done < b.to:
                    backfills.append(Backfill(key, b.done, b.to, b.pending_end if b.pending else None))
            pending = head.pending_end if head.pending else None
            return Snapshot(head.done, [live[k] for k in keys], groups, subjects, backfills, pending)

    def apply(self, batch: Batch) -> bool:
        with self._lock:
            live, progress = self._sync()
            stream = LIVE if batch.backfill is None else _backfill(batch.backfill)
            p = progress.get(stream, Progress(stream))
            if not self._current(batch, p, live):
                return False
            if not p.pending:
                meters = tuple(sorted(batch.meters))
                p = self._progress.write(Progress(stream, batch.start, p.to, batch.end, meters, p.version))
            write_usage(self._conn, batch.replay, set(p.pending_meters), p)
            self._progress.write(Progress(stream, batch.end, p.to, 0, (), p.version))
            return True

    def query(self, meter: Meter, query: MeterQuery) -> list[Row]:
        if query.start_us is not None or query.end_us is not None:
            # a partial minute needs the raw events of that minute, which this store does not
            # read yet: refuse rather than answer a whole minute's usage for part of it
            raise InvalidInput("this usage store answers ranges on whole minutes only", code="unaligned_range")
        dimensions = tuple(sorted(meter.spec.group_by))
        check_dimensions(query, dimensions)
        if meter.key not in {m.key for m in self._meters()}:
            return []
        unique = meter.spec.aggregation is Aggregation.UNIQUE_COUNT
        table = "usage_uniques" if unique else "usage_rollups"
        bounds = query_grid(query, self._now_us(), lambda: self._first_bucket(table, meter.key))
        if not bounds:
            return []
        where, params = _where(meter.key, bucket_size(bounds), bounds, query.subjects)
        if unique:
            sql = f"SELECT DISTINCT subject, group_key, bucket, value FROM usage_uniques WHERE {where}"
            return merge_unique(self._conn.rows(sql, params), bounds, query, dimensions)
        keys = _grouping(query, bounds, params)
        sql = (
            f"SELECT {keys}, sum(count), sum(total), min(low), max(high), max(latest)"
            f" FROM usage_rollups WHERE {where} GROUP BY s_, g_, w_"
        )
        states = (_state(meter.spec.aggregation, row) for row in self._conn.rows(sql, params))
        return merge(meter.spec.aggregation, states, bounds, query, dimensions)

    # -- steps -------------------------------------------------------------------------------

    def _sync(self) -> tuple[dict[int, Meter], dict[str, Progress]]:
        """The live meters, and every stream's progress; a meter first seen starts its backfill
        at the live offset (or at the end of the live range being applied)."""
        live = {m.key: m for m in self._meters()}
        progress = self._progress.read()
        head = progress.get(LIVE, Progress(LIVE))
        for key in live:
            if _backfill(key) not in progress:
                to = head.pending_end if head.pending else head.done
                progress[_backfill(key)] = self._progress.write(Progress(_backfill(key), 0, to))
        return live, progress

    def _current(self, batch: Batch, p: Progress, live: dict[int, Meter]) -> bool:
        if p.done != batch.start or (p.pending and p.pending_end != batch.end):
            return False
        if batch.backfill is not None:
            return batch.backfill in live and batch.end <= p.to
        return set(live) == batch.meters

    def _first_bucket(self, table: str, key: int) -> int | None:
        rows = self._conn.rows(
            f"SELECT min(bucket), count() FROM {table} WHERE meter = {{m:UInt64}} AND level = {_HOUR}", {"m": key}
        )
        return int(rows[0][0]) if rows and rows[0][1] else None


def write_usage(conn: Connection, replay: Replay, meters: set[int], p: Progress) -> None:
    """Insert a replay's rollup states, UNIQUE_COUNT values and new group values / subjects of
    ``meters`` under the tokens of the range ``p`` records (then clear the replay, as written)."""
    fold = replay.fold
    conn.insert("usage_rollups", ROLLUPS, rollup_rows(fold.levels(), meters), p.token("rollups"))
    conn.insert("usage_uniques", UNIQUES, sorted(u for u in fold.uniques if u[0] in meters), p.token("uniques"))
    dims = [(m, d, v, 0) for m, d, v in replay.new_groups if m in meters]
    dims += [(m, "", s, 1) for m, s in replay.new_subjects if m in meters]
    conn.insert("usage_dims", DIMS, sorted(set(dims)), p.token("dims"))
    replay.new_groups.clear()
    replay.new_subjects.clear()
    fold.clear()


def read_dims(conn: Connection, keys: Sequence[int]) -> tuple[dict[tuple[int, str], set[str]], dict[int, set[str]]]:
    """The group values (by meter and dimension) and subjects (by meter) ``keys`` have seen."""
    groups: dict[tuple[int, str], set[str]] = {}
    subjects: dict[int, set[str]] = {}
    if keys:
        sql = "SELECT meter, dim, value, is_subject FROM usage_dims WHERE has({keys:Array(UInt64)}, meter)"
        for meter, dim, value, is_subject in conn.rows(sql, {"keys": sorted(keys)}):
            if is_subject:
                subjects.setdefault(meter, set()).add(value)
            else:
                groups.setdefault((meter, dim), set()).add(value)
    return groups, subjects


def rollup_rows(levels: dict[Aggregation, dict[Any, list[Any]]], meters: set[int]) -> list[list[Any]]:
    """The folded states of ``meters`` as rows of ``usage_rollups``, in key order (so the same
    batch is always the same insert)."""
    rows = []
    for states in levels.values():
        for (meter, level, subject, bucket, group), s in states.items():
            if meter not in meters:
                continue
            if s[1] is None:  # COUNT: only the count is kept
                rows.append([meter, level, subject, bucket, group, s[0], _ZERO, _ZERO, _ZERO, (0, 0, _ZERO)])
                continue
            latest = (s[4][0], s[4][1], _exact(s[4][2]))
            rows.append([meter, level, subject, bucket, group, s[0], _exact(s[1]), _exact(s[2]), _exact(s[3]), latest])
    rows.sort(key=lambda r: r[:5])
    return rows


def _exact(d: Decimal) -> Decimal:
    """``d`` when ``Decimal256(38)`` holds it exactly; quantities are never rounded."""
    t = d.normalize().as_tuple()
    exponent = int(t.exponent)
    if exponent < -38 or len(t.digits) + exponent > 38:
        raise StorageUnavailable(f"a quantity outside Decimal256(38) cannot be stored exactly: {d}")
    return d


def _where(key: int, level: int, bounds: Sequence[int], subjects: Iterable[str]) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"m": key, "lv": level, "lo": bounds[0], "hi": bounds[-1]}
    where = "meter = {m:UInt64} AND level = {lv:UInt32} AND bucket >= {lo:Int64} AND bucket < {hi:Int64}"
    wanted = sorted(set(subjects))
    if wanted:
        params["s"] = wanted
        where += " AND has({s:Array(String)}, subject)"
    return where, params


_MAX_BOUNDS_IN_SQL = 2000
"""Grids up to this many boundaries are merged into windows by ClickHouse; finer ones per bucket."""


def _grouping(query: MeterQuery, bounds: Sequence[int], params: dict[str, Any]) -> str:
    """The columns the states are merged over in ClickHouse: the window (as the start of its
    first bucket), and subject and group only where the answer or a filter needs them, so a
    month total is one row however many buckets, subjects and groups it covers."""
    by_subject = "subject" in query.group_by or (bool(query.subjects) and not query.combine_subjects)
    keep_subject = by_subject or any(d == "subject" for d, _, _ in query.filters)
    keep_group = any(d != "subject" for d in query.group_by) or any(d != "subject" for d, _, _ in query.filters)
    subject = "subject" if keep_subject else "''"
    group = "group_key" if keep_group else "'[]'"
    window = "bucket"
    if len(bounds) <= _MAX_BOUNDS_IN_SQL:
        params["b"] = list(bounds)
        window = "arrayElement({b:Array(Int64)}, arrayFirstIndex(x -> x > bucket, {b:Array(Int64)}) - 1)"
    return f"{subject} AS s_, {group} AS g_, {window} AS w_"


def _state(aggregation: Aggregation, row: tuple[Any, ...]) -> BucketState:
    subject, group, bucket, count, total, low, high, latest = row
    return BucketState(
        subject,
        group,
        int(bucket),
        int(count),
        in_stored_form(total) if aggregation in (Aggregation.SUM, Aggregation.AVG) else None,
        in_stored_form(low) if aggregation is Aggregation.MIN else None,
        in_stored_form(high) if aggregation is Aggregation.MAX else None,
        (int(latest[0]), int(latest[1]), in_stored_form(latest[2])) if aggregation is Aggregation.LATEST else None,
    )
