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

A live batch also inserts its ledger entries into the raw ``events`` table (token
``live:<start>-<end>:events``), as the sink does for its partitions: the partial first or last
minute of a query is answered from them, exactly (``domain.meters.edges``).

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
from meterline.adapters.clickhouse.corrections import HOUR, Applied, applied, hour_key, hour_keys
from meterline.adapters.clickhouse.gauges import (
    MAX_BOUNDS_IN_SQL,
    Integrated,
    carried,
    gauge_rows,
    integrated,
    latest,
    read_states,
    recomputed,
    window_sql,
)
from meterline.adapters.clickhouse.kept import KEPT_COLUMNS, raw_union
from meterline.adapters.clickhouse.progress import Progress, ProgressTable
from meterline.adapters.clickhouse.schema import DIMS, EVENTS, GAUGES, ROLLUPS, SKETCHES, UNIQUES, create
from meterline.domain.decimals import in_stored_form
from meterline.domain.errors import InvalidInput, StorageUnavailable
from meterline.domain.meters.edges import (
    edge_ranges,
    edge_uniques,
    exact_rows,
    gauge_edge_ranges,
    gauge_points,
    inner_bounds,
    relabel,
)
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import Key, LedgerEntry, Replay, Unique
from meterline.domain.meters.gauges import GaugeRows, series_of, windows_us
from meterline.domain.meters.model import Aggregation, Meter, is_builtin
from meterline.domain.meters.query import (
    BucketState,
    MeterQuery,
    Row,
    Unmergeable,
    check_dimensions,
    merge_sketches,
    query_grid,
)
from meterline.domain.meters.sketch import Histogram, M, Sketch, register_of
from meterline.domain.meters.windows import bucket_size
from meterline.ports.usage import Backfill, Batch, Snapshot

__all__ = ["ClickHouseUsage", "raw_rows", "read_dims", "rollup_rows", "sketch_rows", "write_usage"]

LIVE = "live"
_TABLES = {
    Aggregation.UNIQUE_COUNT: "usage_uniques",
    Aggregation.APPROX_UNIQUE_COUNT: "usage_sketches",
    Aggregation.TIME_WEIGHTED_SUM: "usage_gauges",
}
"""The table a meter's buckets are in, by aggregation (the others: ``usage_rollups``)."""
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
        self._retention = raw_retention_seconds
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
            if batch.backfill is None:  # the raw events, for partial minutes (as the sink writes them)
                self._conn.insert("events", EVENTS, raw_rows(batch.entries, stream), p.token("events"))
            write_usage(self._conn, batch.replay, set(p.pending_meters), p)
            self._progress.write(Progress(stream, batch.end, p.to, 0, (), p.version))
            return True

    def query(self, meter: Meter, query: MeterQuery) -> list[Row]:
        """Whole minutes from the rollups, a partial first or last minute from the raw events
        table, only what the rollups reflect (``domain.meters.edges``, :meth:`_edges`); the
        hours applied corrections touched from the raw events too (:mod:`.corrections`)."""
        check_dimensions(query, tuple(sorted(meter.spec.group_by)))
        if meter.key not in {m.key for m in self._meters()}:
            return []
        aggregation = meter.spec.aggregation
        table = _TABLES.get(aggregation, "usage_rollups")
        bounds = query_grid(query, self._now_us(), lambda: self._first_bucket(table, meter.key))
        if not bounds:
            return []
        inner = inner_bounds(query, bounds)
        progress = self._progress.read()
        fixes = applied(self._conn, meter.namespace, {k: p.done for k, p in progress.items()})
        whole = inner[0] < inner[-1]
        of_type = None if is_builtin(meter.spec) else meter.spec.event_type  # a built-in counts every type
        hours = {
            (subject, hour)
            for subject, hour in fixes.hours(of_type, query.subjects)
            if whole and hour + HOUR > inner[0] and hour < inner[-1]
        }
        where, params = _where(meter.key, bucket_size(inner), inner, query.subjects)
        if hours:  # a corrected hour is answered from the raw events: its buckets are left out here
            params["cx"] = hour_keys(hours)
            where += f" AND NOT has({{cx:Array(String)}}, {hour_key('bucket')})"
        if aggregation is Aggregation.TIME_WEIGHTED_SUM:  # never built in: every entry goes through ``fixes``
            answer = self._gauges(meter, query, bounds, inner, (where, params), (progress, fixes, hours))
            return relabel(answer, query, bounds)
        read: list[Any]
        if aggregation is Aggregation.UNIQUE_COUNT:
            sql = f"SELECT DISTINCT subject, group_key, bucket, value FROM usage_uniques WHERE {where}"
            read = self._conn.rows(sql, params) if whole else []
        elif aggregation is Aggregation.APPROX_UNIQUE_COUNT:
            final = not (edge_ranges(query, bounds) or hours) and _one_row_per_answer(meter, query, bounds)
            read = self._sketches(query, bounds, inner, where, params, final=final)
        else:
            keys = _grouping(query, bounds, params)
            sql = (
                f"SELECT {keys}, sum(count), sum(total), min(low), max(high), max(latest)"
                f" FROM usage_rollups WHERE {where} GROUP BY s_, g_, w_"
            )
            rows = self._conn.rows(sql, params) if whole else []
            read = [_state(aggregation, row) for row in rows]
        ranges = edge_ranges(query, bounds)
        groups: dict[tuple[int, str], set[str]] = {}
        raw: list[tuple[str, LedgerEntry, int]] = []
        if ranges or hours:
            groups, _ = read_dims(self._conn, [meter.key])
            raw = self._edges(meter, query, ranges, progress) if ranges else []
        if hours:
            raw += self._raw(meter, progress, *_in_hours(hours, inner))
        edges = [e for stream, e, _ in raw if fixes.counts(stream, e.seq)]

        def admitted(dim: str, value: str) -> bool:
            return not (ranges or hours) or value in groups.get((meter.key, dim), ())

        if aggregation is Aggregation.APPROX_UNIQUE_COUNT:
            values = edge_uniques(CompiledMeter(meter), edges, admitted)
            dimensions = tuple(sorted(meter.spec.group_by))
            try:
                return relabel(merge_sketches(read, values, bounds, query, dimensions), query, bounds)
            except Unmergeable:  # windows ClickHouse merged were not the answer's after all
                read = self._sketches(query, bounds, inner, where, params, final=False)
                return relabel(merge_sketches(read, values, bounds, query, dimensions), query, bounds)
        return exact_rows(meter, query, bounds, read, edges, admitted)

    def _sketches(
        self,
        query: MeterQuery,
        bounds: Sequence[int],
        inner: Sequence[int],
        where: str,
        params: dict[str, Any],
        *,
        final: bool,
    ) -> list[tuple[str, str, int, Sketch | Histogram]]:
        """APPROX_UNIQUE_COUNT: the buckets' registers merged per window (each register's
        maximum, in ClickHouse), as (subject, group key, window's first bucket, sketch). When
        each row is ``final`` (a whole answer row: nothing more merges into it), ClickHouse
        also counts its registers per rank and only that :class:`Histogram` is read (a few
        numbers instead of up to 4,096 registers decoded and rebuilt in Python per row)."""
        if inner[0] >= inner[-1]:
            return []
        keys = _grouping(query, bounds, params)
        merged = f"SELECT {keys}, maxMap(registers) AS r FROM usage_sketches WHERE {where} GROUP BY s_, g_, w_"
        if not final:
            return [(s, g, int(w), Sketch.from_pairs(*regs)) for s, g, w, regs in self._conn.rows(merged, params)]
        sql = (
            "SELECT s_, g_, w_, arrayMax(r.1), arrayReduce('sumMap', [r.2], [arrayWithConstant(length(r.2), 1)])"
            f" FROM ({merged})"
        )
        out: list[tuple[str, str, int, Sketch | Histogram]] = []
        for s, g, w, top, (ranks, counts) in self._conn.rows(sql, params):
            if top >= M:
                raise InvalidInput("not a stored sketch", code="invalid_sketch")
            out.append((s, g, int(w), Histogram.of_ranks(ranks, counts)))
        return out

    def _gauges(
        self,
        meter: Meter,
        query: MeterQuery,
        bounds: Sequence[int],
        inner: tuple[int, ...],
        selected: tuple[str, dict[str, Any]],
        corrections: tuple[dict[str, Progress], Applied, set[tuple[str, int]]],
    ) -> list[Row]:
        """TIME_WEIGHTED_SUM (``.gauges``): the series that need nothing from the raw events are
        integrated per window in ClickHouse (``gauges.integrated``); the others — a bucket whose
        batches interleave, a subject with corrected hours (``corrections``: the streams'
        progress, the applied corrections and the corrected hours left out of ``selected``) or
        with readings in a partial minute — as their carry (the last reading before the range),
        their joined bucket states in the whole minutes ``selected`` reads, and, as readings
        from the raw events that count, the interleaving buckets, the corrected hours and the
        partial minutes, integrated per window as embedded mode integrates them. Where
        ClickHouse cannot integrate exactly (a grid of too many uneven windows, sums beyond its
        decimals) every series takes the second way."""
        where, params = selected
        progress, fixes, hours = corrections
        groups, _ = read_dims(self._conn, [meter.key])
        compiled = CompiledMeter(meter)

        def read_raw(ranges: list[tuple[int, int]]) -> list[LedgerEntry]:
            entries = self._edges(meter, query, ranges, progress)
            return [e for stream, e, _ in entries if fixes.counts(stream, e.seq)]

        def points(entries: list[LedgerEntry]) -> list[BucketState]:
            return gauge_points(compiled, entries, lambda dim, v: v in groups.get((meter.key, dim), ()))

        raw = self._raw(meter, progress, *_in_hours(hours, inner)) if hours else []
        readings = points([e for stream, e, _ in raw if fixes.counts(stream, e.seq)])
        ranges = gauge_edge_ranges(query, bounds)
        if ranges:
            readings += points(read_raw(ranges))
        out = GaugeRows(query, bounds, tuple(sorted(meter.spec.group_by)), self._now_us())
        done = None
        if inner[0] < inner[-1]:
            corrected = {s for s, h in fixes.hours(meter.spec.event_type, query.subjects) if h < bounds[-1]}
            done = self._integrated(meter, query, bounds, selected, corrected | {p.subject for p in readings})
        if done is None:
            states, interleaved = read_states(self._conn, where, params) if inner[0] < inner[-1] else ([], [])
            carries = self._carry(meter, query.subjects, bounds[0], progress, fixes)
        else:
            for w, subject, group, value in done.values:
                out.add_integral(w, subject, group, value)
            states, interleaved = done.states, done.interleaved
            carries = self._dirty_carries(meter, bounds[0], progress, fixes, done)
        every = carries + states + recomputed(interleaved, bucket_size(inner), read_raw, points) + readings
        for (subject, group), series in series_of(every).items():
            out.add(subject, group, series)
        return out.rows()

    def _integrated(
        self, meter: Meter, query: MeterQuery, bounds: Sequence[int], selected: tuple[str, dict[str, Any]],
        dirty: set[str],
    ) -> Integrated | None:  # fmt: skip
        now = self._now_us()
        grid = window_sql(bounds, windows_us(query, bounds), _step(bounds), now)
        if grid is None:
            return None
        return integrated(self._conn, selected, meter.key, grid, _kept(query), dirty, bounds[0], now)

    def _dirty_carries(
        self, meter: Meter, before: int, progress: dict[str, Progress], fixes: Applied, done: Integrated
    ) -> list[BucketState]:
        """The carries of the series ``gauges.integrated`` left to Python: every series of a
        dirty subject, and the series with an interleaving bucket."""
        series = {(s.subject, s.group_key) for s in done.states} | {(s, g) for s, g, _ in done.interleaved}
        subjects = done.dirty_subjects | {s for s, _ in series}
        if not subjects:
            return []
        found = self._carry(meter, sorted(subjects), before, progress, fixes)
        return [c for c in found if c.subject in done.dirty_subjects or (c.subject, c.group_key) in series]

    def _carry(
        self, meter: Meter, subjects: Sequence[str], before: int, progress: dict[str, Progress], fixes: Applied
    ) -> list[BucketState]:
        """TIME_WEIGHTED_SUM: per series (of ``subjects``, or of all when none), the last reading
        before ``before`` that counts — from the stored states, and in the hours corrections
        touched from the raw events."""
        hours = {(s, h) for s, h in fixes.hours(meter.spec.event_type, subjects) if h < before}
        stored = carried(self._conn, meter.key, before, subjects, hour_keys(hours))
        if not hours:
            return stored
        params = {"chx": hour_keys(hours), "cb": before * 1_000_000}
        where = f" AND time_us < {{cb:Int64}} AND has({{chx:Array(String)}}, {hour_key('intDiv(time_us, 1000000)')})"
        raw = [e for stream, e, _ in self._raw(meter, progress, where, params) if fixes.counts(stream, e.seq)]
        groups, _ = read_dims(self._conn, [meter.key])
        readings = gauge_points(CompiledMeter(meter), raw, lambda dim, v: v in groups.get((meter.key, dim), ()))
        return latest(stored + readings)

    def _edges(
        self, meter: Meter, query: MeterQuery, ranges: Sequence[tuple[int, int]], progress: dict[str, Progress]
    ) -> list[tuple[str, LedgerEntry, int]]:
        """The raw events of the partial minutes ``ranges`` (see :meth:`_raw`). Ranges older
        than the raw events' retention are refused (their events may be gone)."""
        if self._retention is not None and ranges[0][0] < self._now_us() - self._retention * 1_000_000:
            raise InvalidInput(
                "a partial minute older than the raw events' retention cannot be answered exactly;"
                " ask for whole minutes",
                code="unaligned_range",
            )
        params: dict[str, Any] = {}
        times = []
        for i, (a, b) in enumerate(ranges):
            params[f"a{i}"], params[f"b{i}"] = a, b
            times.append(f"(time_us >= {{a{i}:Int64}} AND time_us < {{b{i}:Int64}})")
        where = f" AND ({' OR '.join(times)})"
        if query.subjects:
            params["subjects"] = sorted(set(query.subjects))
            where += " AND has({subjects:Array(String)}, subject)"
        return self._raw(meter, progress, where, params, kept=False)  # younger than the retention: all in events

    def _raw(
        self,
        meter: Meter,
        progress: dict[str, Progress],
        where_more: str,
        params_more: dict[str, Any],
        *,
        kept: bool = True,
    ) -> list[tuple[str, LedgerEntry, int]]:
        """The raw events of the meter's namespace and type matching ``where_more`` that the
        rollups reflect: per stream, up to its recorded position, less the meter's backfill
        still to apply; each with its stream and ``corrects`` (corrections are the caller's to apply).
        ``kept``: also those of corrected hours kept past the raw table's TTL (``.kept``)."""
        reflected: list[str] = []
        params: dict[str, Any] = {"ns": meter.namespace, "t": meter.spec.event_type, **params_more}
        for i, p in enumerate(v for k, v in sorted(progress.items()) if not k.startswith("backfill:")):
            params[f"s{i}"], params[f"d{i}"] = p.stream, p.done
            reflected.append(f"(stream = {{s{i}:String}} AND seq <= {{d{i}:UInt64}})")
        if not reflected:
            return []
        of_type = "" if is_builtin(meter.spec) else " AND type = {t:String}"  # a built-in: every type
        where = f"namespace = {{ns:String}}{of_type} AND ({' OR '.join(reflected)})"
        for i, (stream, fill) in enumerate(_unfinished(progress, meter.key)):
            params[f"bs{i}"], params[f"bd{i}"], params[f"bt{i}"] = stream, fill.done, fill.to
            where += f" AND NOT (stream = {{bs{i}:String}} AND seq > {{bd{i}:UInt64}} AND seq <= {{bt{i}:UInt64}})"
        where += where_more
        source = raw_union(KEPT_COLUMNS, where) if kept else f"(SELECT {KEPT_COLUMNS} FROM events WHERE {where})"
        sql = f"SELECT DISTINCT stream, seq, namespace, source, type, subject, time_us, raw, corrects FROM {source}"
        return [
            (stream, LedgerEntry(seq, ns, source, type_, subject, time_us, raw.encode()), int(corrects))
            for stream, seq, ns, source, type_, subject, time_us, raw, corrects in self._conn.rows(sql, params)
        ]

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


def _unfinished(progress: dict[str, Progress], key: int) -> list[tuple[str, Progress]]:
    """The meter's unfinished backfills, by the stream whose entries each still lacks: the
    live offset's (``backfill:<meter>``) and each partition's (``backfill:<meter>:<stream>``)."""
    out = []
    for name, p in sorted(progress.items()):
        if p.done >= p.to:
            continue
        if name == _backfill(key):
            out.append((LIVE, p))
        elif name.startswith(f"{_backfill(key)}:"):
            out.append((name[len(_backfill(key)) + 1 :], p))
    return out


def _in_hours(hours: set[tuple[str, int]], inner: Sequence[int]) -> tuple[str, dict[str, Any]]:
    """The raw-table condition of the corrected ``hours`` within the rollup range ``inner``."""
    params = {"hx": hour_keys(hours), "h0": inner[0] * 1_000_000, "h1": inner[-1] * 1_000_000}
    key = hour_key("intDiv(time_us, 1000000)")
    where = f" AND time_us >= {{h0:Int64}} AND time_us < {{h1:Int64}} AND has({{hx:Array(String)}}, {key})"
    return where, params


def raw_rows(entries: Iterable[LedgerEntry], stream: str) -> list[tuple[Any, ...]]:
    """Ledger entries as rows of the raw ``events`` table."""
    return [
        (
            e.namespace,
            e.source,
            e.type,
            e.subject,
            e.time_us,
            e.received_us,
            e.raw.decode(),
            stream,
            e.seq,
            e.correction,
            e.record.decode(),
        )
        for e in entries
    ]


def write_usage(conn: Connection, replay: Replay, meters: set[int], p: Progress, into: str = "") -> None:
    """Insert a replay's rollup states, UNIQUE_COUNT values, APPROX_UNIQUE_COUNT registers and
    new group values / subjects of ``meters`` under the tokens of the range ``p`` records (then
    clear the replay, as written);
    ``into``: a prefix of the tables' names (``meterline rebuild`` writes beside them)."""
    fold = replay.fold
    levels = fold.levels()
    gauges = levels.pop(Aggregation.TIME_WEIGHTED_SUM, {})
    conn.insert(f"{into}usage_rollups", ROLLUPS, rollup_rows(levels, meters), p.token("rollups"))
    conn.insert(f"{into}usage_gauges", GAUGES, gauge_rows(gauges, meters, _exact), p.token("gauges"))
    uniques = sorted(u for u in fold.uniques if u[0] in meters)
    conn.insert(f"{into}usage_uniques", UNIQUES, uniques, p.token("uniques"))
    conn.insert(f"{into}usage_sketches", SKETCHES, sketch_rows(fold.sketched, meters), p.token("sketches"))
    dims = [(m, d, v, 0) for m, d, v in replay.new_groups if m in meters]
    dims += [(m, "", s, 1) for m, s in replay.new_subjects if m in meters]
    conn.insert(f"{into}usage_dims", DIMS, sorted(set(dims)), p.token("dims"))
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


def sketch_rows(values: Iterable[Unique], meters: set[int]) -> list[list[Any]]:
    """APPROX_UNIQUE_COUNT values (as ``Fold.sketched`` holds them) of ``meters`` as rows of
    ``usage_sketches``: per key, the (indices, ranks) of the registers their sketch sets, in
    index order, the rows in key order (so the same batch is always the same insert). Kept
    sparse: a bucket with few values costs a few pairs, never a pass over 4,096 registers."""
    sketches: dict[Key, dict[int, int]] = {}
    registers: dict[str, tuple[int, int]] = {}  # a value is in up to three buckets: hashed once
    for meter, level, subject, bucket, group, value in values:
        if meter not in meters:
            continue
        sketch = sketches.get((meter, level, subject, bucket, group))
        if sketch is None:
            sketch = sketches[(meter, level, subject, bucket, group)] = {}
        found = registers.get(value)
        if found is None:
            found = registers[value] = register_of(value)
        index, rank = found
        if rank > sketch.get(index, 0):
            sketch[index] = rank
    rows = []
    for key in sorted(sketches):
        indices = sorted(sketches[key])
        rows.append([*key, (indices, [sketches[key][i] for i in indices])])
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


def _grouping(query: MeterQuery, bounds: Sequence[int], params: dict[str, Any]) -> str:
    """The columns the states are merged over in ClickHouse: the window (as the start of its
    first bucket), and subject and group only where the answer or a filter needs them, so a
    month total is one row however many buckets, subjects and groups it covers."""
    subject, group = _kept(query)
    window = "bucket"
    step = _step(bounds)
    if step:  # windows of one length (but the first and last): found by arithmetic
        params.update({"w0": bounds[0], "w1": bounds[1], "ws": step})
        window = (
            "if(bucket < {w1:Int64}, {w0:Int64}, {w1:Int64} + intDiv(bucket - {w1:Int64}, {ws:Int64}) * {ws:Int64})"
        )
    elif len(bounds) <= MAX_BOUNDS_IN_SQL:
        params["b"] = list(bounds)
        window = "arrayElement({b:Array(Int64)}, arrayFirstIndex(x -> x > bucket, {b:Array(Int64)}) - 1)"
    return f"{subject} AS s_, {group} AS g_, {window} AS w_"


def _kept(query: MeterQuery) -> tuple[str, str]:
    """The subject and group key columns, or constants where neither the answer nor a filter
    needs them (:func:`_grouping`)."""
    by_subject = "subject" in query.group_by or (bool(query.subjects) and not query.combine_subjects)
    keep_subject = by_subject or any(d == "subject" for d, _, _ in query.filters)
    keep_group = any(d != "subject" for d in query.group_by) or any(d != "subject" for d, _, _ in query.filters)
    return ("subject" if keep_subject else "''"), ("group_key" if keep_group else "'[]'")


def _step(bounds: Sequence[int]) -> int | None:
    """The length of a grid's windows when all but the first and last have one length and the
    last is no longer (a UTC or fixed-offset grid, a partial first or last window): each bucket's
    window is then ``bounds[0]`` before ``bounds[1]``, else ``bounds[1]`` plus whole steps — the
    same window the boundaries give, without a search of them per row (which cost ClickHouse
    several times the merge itself for a month of HOUR windows)."""
    if len(bounds) < 3:
        return None
    step = bounds[2] - bounds[1]
    interior = all(bounds[i + 1] - bounds[i] == step for i in range(1, len(bounds) - 2))
    return step if step > 0 and interior and bounds[-1] - bounds[-2] <= step else None


def _one_row_per_answer(meter: Meter, query: MeterQuery, bounds: Sequence[int]) -> bool:
    """Whether :func:`_grouping` gives each row of the answer (window, subject if grouped,
    group values) exactly one row: not when windows are merged from their buckets in Python
    (finer grids), the subject is kept for a filter only, or the group key for a filter or a
    group-by of some of the meter's dimensions (several keys then make one answer row)."""
    if len(bounds) > MAX_BOUNDS_IN_SQL and not _step(bounds):
        return False
    by_subject = "subject" in query.group_by or (bool(query.subjects) and not query.combine_subjects)
    if not by_subject and any(d == "subject" for d, _, _ in query.filters):
        return False
    picked = {d for d in query.group_by if d != "subject"}
    keep_group = bool(picked) or any(d != "subject" for d, _, _ in query.filters)
    return not keep_group or picked == set(meter.spec.group_by)


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
