"""Meters in SQLite: definitions and window queries on rollups.

A meter created after events exist covers them too: it is created with a backfill offset
(``backfill_done`` = 0 up to ``backfill_to`` = the aggregator's live offset then), and the
aggregator (``services.aggregation``) applies that range to it in chunks, each chunk
committed with its offset, while the live offset carries it forward from ``backfill_to``.

A ``groupBy`` change is the same mechanism: in one transaction the new definition is stored,
the meter's derived rows (rollups, uniques, summaries, group values, subjects) are deleted and
its backfill restarts at 0 up to the live offset; batches computed with the old definition are
refused (``adapters.sqlite.usage``). Until the backfill is done, reads of the meter wait for
it (bounded) and otherwise answer 503 ``meter_backfilling``, never a partial number."""

from __future__ import annotations

import bisect
import builtins
import functools
import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator

import msgspec
from ulid import ULID

from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.gauges import carried, read_gauges
from meterline.adapters.sqlite.ingest import IngestState, live_meters
from meterline.adapters.sqlite.per_subject import (
    FOLDED,
    SUBTRACTABLE,
    Part,
    cheapest,
    fold_subjects,
    fold_wide,
    occupied,
    short_edges,
)
from meterline.adapters.sqlite.replay import stored_offset
from meterline.adapters.sqlite.retention import hours_before
from meterline.adapters.sqlite.rollups import first_bucket, read_sketches, read_states, read_uniques
from meterline.adapters.sqlite.summaries import (
    DAY,
    MONTH,
    QUARTER,
    has_day,
    plan,
    subject_states,
    wide_states,
    with_months,
)
from meterline.domain.errors import Backfilling, Conflict, InvalidInput, NotFound
from meterline.domain.meters.edges import (
    edge_ranges,
    edge_states,
    edge_uniques,
    gauge_edge_ranges,
    gauge_points,
    inner_bounds,
    relabel,
)
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import LedgerEntry
from meterline.domain.meters.gauges import GaugeRows, series_of
from meterline.domain.meters.model import (
    RESERVED_SLUGS,
    Aggregation,
    Meter,
    MeterSpec,
    ingested_bytes_spec,
    is_builtin,
)
from meterline.domain.meters.query import (
    SUBJECT,
    BucketState,
    MeterQuery,
    Row,
    check_dimensions,
    folded_rows,
    merge,
    merge_sketches,
    merge_unique,
    query_grid,
)
from meterline.domain.meters.windows import bucket_size

_encode = msgspec.json.Encoder().encode
_spec = msgspec.json.Decoder(MeterSpec)
_COLUMNS = "key, id, namespace, spec, created_us, updated_us"


class SqliteMeters:
    def __init__(self, db: Database, state: IngestState, now_us: Callable[[], int]) -> None:
        self._db = db
        self._state = state
        self._now_us = now_us
        self.changed: Callable[[], None] = lambda: None
        """Called after a meter was created, deleted or regrouped (the aggregator reloads its meters)."""
        self.regrouped: Callable[[], None] = lambda: None
        """Called after a meter's ``groupBy`` changed (the live counters reload their meters)."""
        self.builtins = False
        """Whether each namespace has the built-in meters (``set_builtins``)."""
        self._ensured: set[str] = set()

    def set_builtins(self, on: bool) -> None:
        """Turn the built-in meters (``ingested_bytes``) on or off for this store. On: the
        ledger's (namespace, time) index that their partial-minute reads and corrections use
        is created, and each namespace in use gets the meter (a namespace first seen later
        gets it when its meters are first read); events already in the ledger are counted in
        by the meter's backfill, like any new meter's. Off: no namespace gets one; built-in
        meters already stored stay (``drop_builtins`` deletes them: the server's start does,
        a CLI command run with another config must not)."""
        self.builtins = on
        self._ensured.clear()
        if on:
            self._db.writer.call(lambda conn: conn.execute(BUILTIN_INDEX))
            for namespace in self._db.writer.call(namespaces_in_use):
                self._ensure(namespace)

    def drop_builtins(self) -> None:
        """Delete the built-in meters, their usage and their ledger index (turned on again,
        a meter is counted anew from the ledger)."""
        if self._db.writer.call(self._drop_builtins):
            self.changed()

    def _drop_builtins(self, conn: sqlite3.Connection) -> bool:
        found = [m for m in live_meters(conn) if is_builtin(m.spec)]
        for meter in found:
            self._delete(conn, meter.key)
        conn.execute("DROP INDEX IF EXISTS events_by_time")
        return bool(found)

    def _ensure(self, namespace: str) -> None:
        """Create the namespace's built-in meter when it has none (once per process). Never
        from the writer thread itself (a task waiting for its own queue would never end):
        there the namespace's next read from another thread creates it."""
        if not self.builtins or namespace in self._ensured or threading.current_thread().name == WRITER_THREAD:
            return
        spec = ingested_bytes_spec()

        def task(conn: sqlite3.Connection) -> bool:
            live = "SELECT 1 FROM meters WHERE namespace = ? AND slug = ? AND deleted_us IS NULL"
            if conn.execute(live, (namespace, spec.slug)).fetchone():
                return False
            self._create(conn, namespace, spec)
            return True

        created = self._db.writer.call(task)
        self._ensured.add(namespace)
        if created:
            self.changed()

    def create(self, namespace: str, spec: MeterSpec) -> Meter:
        meter = self._db.writer.call(lambda conn: self._create(conn, namespace, spec))
        self.changed()
        return meter

    def _create(self, conn: sqlite3.Connection, namespace: str, spec: MeterSpec) -> Meter:
        if conn.execute(
            "SELECT 1 FROM meters WHERE namespace = ? AND slug = ? AND deleted_us IS NULL", (namespace, spec.slug)
        ).fetchone():
            raise Conflict(f"A meter with slug {spec.slug!r} already exists", code="meter_exists")
        if is_builtin(spec):  # its partial minutes and corrected hours read events of every type
            conn.execute(BUILTIN_INDEX)
        head = stored_offset(conn)  # the live offset carries the meter from here on
        now = self._now_us()
        meter_id = str(ULID())
        cur = conn.execute(
            "INSERT INTO meters (id, namespace, slug, spec, created_us, updated_us, backfill_to, backfill_done)"
            " VALUES (?,?,?,?,?,?,?,0)",
            (meter_id, namespace, spec.slug, _encode(spec), now, now, head),
        )
        self._state.invalidate()
        assert cur.lastrowid is not None
        return Meter(cur.lastrowid, meter_id, namespace, spec, now, now)

    def list(self, namespace: str) -> builtins.list[Meter]:
        self._ensure(namespace)
        return [m for m in live_meters(self._db.reader()) if m.namespace == namespace]

    def get(self, namespace: str, id_or_slug: str) -> Meter:
        if id_or_slug in RESERVED_SLUGS:
            self._ensure(namespace)
        row = (
            self._db.reader()
            .execute(
                f"SELECT {_COLUMNS} FROM meters WHERE namespace = ? AND (slug = ? OR id = ?) AND deleted_us IS NULL",
                (namespace, id_or_slug, id_or_slug),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(f"No meter {id_or_slug!r}", code="meter_not_found")
        key, id_, ns, spec, created, updated = row
        return Meter(key, id_, ns, _spec.decode(spec), created, updated)

    def update(self, namespace: str, id_or_slug: str, spec: MeterSpec) -> Meter:
        """Store a new definition; a new ``groupBy`` re-derives the meter from the ledger."""
        meter = self.get(namespace, id_or_slug)
        regroup = spec.group_by != meter.spec.group_by
        # strictly later than the last definition: batches are matched to it (adapters.sqlite.usage)
        now = max(self._now_us(), meter.updated_us + 1)

        def task(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE meters SET spec = ?, updated_us = ? WHERE key = ? AND deleted_us IS NULL",
                (_encode(spec), now, meter.key),
            )
            if cur.rowcount == 0:
                raise NotFound(f"No meter {id_or_slug!r}", code="meter_not_found")
            if regroup:
                _clear_derived(conn, meter.key)
                restart = "UPDATE meters SET backfill_done = 0, backfill_to = ? WHERE key = ?"
                conn.execute(restart, (stored_offset(conn), meter.key))
            self._state.invalidate()

        self._db.writer.call(task)
        if regroup:
            self.changed()
            self.regrouped()
        return msgspec.structs.replace(meter, spec=spec, updated_us=now)

    def delete(self, namespace: str, id_or_slug: str) -> None:
        meter = self.get(namespace, id_or_slug)
        self._db.writer.call(lambda conn: self._delete(conn, meter.key))
        self.changed()

    def _delete(self, conn: sqlite3.Connection, key: int) -> None:
        # An aggregated batch computed with this meter is refused once it is gone (usage.py).
        conn.execute("UPDATE meters SET deleted_us = ? WHERE key = ? AND deleted_us IS NULL", (self._now_us(), key))
        _clear_derived(conn, key)
        self._state.invalidate()

    def query(self, meter: Meter, query: MeterQuery) -> builtins.list[Row]:
        """Answer from rollups. Open ``start`` means the meter's first data, open ``end`` now.
        Waits first (bounded) for the aggregator to apply the ledger as of now, and for the
        meter's backfill (``settled``)."""
        self._db.fresh()
        settled(self._db, meter)
        return query_rows(self._db.reader(), meter, query, self._now_us())

    def pending_backfill(self) -> int:
        """Ledger events not yet applied to some live meter (the rollup lag): the entries
        after the live offset and what backfilling meters still have to apply."""
        conn = self._db.reader()
        row = conn.execute(
            "SELECT coalesce(sum(backfill_to - backfill_done), 0) FROM meters WHERE deleted_us IS NULL"
        ).fetchone()
        return int(row[0]) + max(0, self._state.head - stored_offset(conn))

    def close(self) -> None:
        """Nothing runs here any more (the aggregator owns the backfill)."""


WRITER_THREAD = "meterline-writer"
"""The name of the writer's thread (``adapters.sqlite.writer``, ``runtime.background.Loop``)."""
BUILTIN_INDEX = "CREATE INDEX IF NOT EXISTS events_by_time ON events (namespace, time_us)"
"""The ledger by (namespace, event time), kept while built-in meters are on: they read the
events of every type of a partial minute or a corrected hour (``edge_sql``, ``recompute``)."""


def namespaces_in_use(conn: sqlite3.Connection) -> builtins.list[str]:
    """The namespaces with meters, customers or counted events, and ``default``."""
    rows = conn.execute(
        "SELECT namespace FROM meters WHERE deleted_us IS NULL UNION SELECT namespace FROM customers"
        " UNION SELECT namespace FROM ledger_counts UNION SELECT 'default'"
    )
    return sorted(ns for (ns,) in rows)


DERIVED = ("rollups", "uniques", "sketches", "group_values", "meter_subjects", "summaries")
"""The tables derived per meter from the ledger (``rebuild`` and a backfill write them)."""


def _clear_derived(conn: sqlite3.Connection, key: int) -> None:
    for table in DERIVED:
        conn.execute(f"DELETE FROM {table} WHERE meter = ?", (key,))


def backfill_progress(conn: sqlite3.Connection, key: int) -> tuple[int, int]:
    """How far the meter's backfill has applied the ledger, and up to where it must (equal
    when it is done; a deleted meter counts as done)."""
    row = conn.execute("SELECT backfill_done, backfill_to FROM meters WHERE key = ?", (key,)).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def settled(db: Database, meter: Meter) -> None:
    """Wait (bounded, ``Database.settled``) until the meter's backfill is done; raise 503
    ``meter_backfilling`` when it is not: its rollups would answer part of its usage."""

    def done() -> bool:
        applied, to = backfill_progress(db.reader(), meter.key)
        return applied >= to

    if db.settled(done):
        return
    applied, to = backfill_progress(db.reader(), meter.key)
    raise Backfilling(
        f"meter {meter.spec.slug!r} is being derived from the ledger ({applied} of {to} entries applied;"
        " a new meter, or a groupBy change): retry shortly",
        applied=applied,
        to=to,
    )


def current(conn: sqlite3.Connection, meter: Meter) -> Meter:
    """``meter`` with its definition as stored on ``conn`` (a reader may hold an older one)."""
    row = conn.execute("SELECT spec, updated_us FROM meters WHERE key = ?", (meter.key,)).fetchone()
    if row is None or row[1] == meter.updated_us:
        return meter
    return msgspec.structs.replace(meter, spec=_spec.decode(row[0]), updated_us=row[1])


def compiled_live(conn: sqlite3.Connection) -> list[CompiledMeter]:
    return [CompiledMeter(m) for m in live_meters(conn)]


def query_rows(conn: sqlite3.Connection, meter: Meter, query: MeterQuery, now_us: int) -> list[Row]:
    """Answer ``query`` from the rollups visible on ``conn`` (a reader, or the writer inside
    its transaction after the pending deltas were flushed)."""
    dimensions = tuple(sorted(meter.spec.group_by))
    check_dimensions(query, dimensions)
    bounds = query_grid(query, now_us, lambda: first_bucket(conn, meter.key))
    if not bounds:
        return []
    if meter.spec.aggregation is Aggregation.TIME_WEIGHTED_SUM:
        return relabel(_gauge_rows(conn, meter, query, bounds, now_us), query, bounds)
    inner, limits = inner_bounds(query, bounds), query.limits
    start, end = inner[0], inner[-1]
    level = bucket_size(inner)
    edges = _edge_entries(conn, meter, query, edge_ranges(query, bounds))
    if meter.spec.aggregation is Aggregation.UNIQUE_COUNT:
        values = itertools.chain(
            read_uniques(conn, meter.key, level, start, end, query.subjects),
            edge_uniques(CompiledMeter(meter), edges, _admitted(conn, meter.key)),
        )
        return relabel(merge_unique(values, bounds, query, dimensions), query, bounds)
    if meter.spec.aggregation is Aggregation.APPROX_UNIQUE_COUNT:
        sketches = read_sketches(conn, meter.key, level, start, end, query.subjects)
        added = edge_uniques(CompiledMeter(meter), edges, _admitted(conn, meter.key))
        return relabel(merge_sketches(sketches, added, bounds, query, dimensions), query, bounds)
    by_subject = SUBJECT in query.group_by or bool(query.subjects) or any(f[0] == SUBJECT for f in query.filters)
    by_group = any(d != SUBJECT for d in query.group_by) or any(f[0] != SUBJECT for f in query.filters)
    states = _summarized(conn, meter, query, inner, by_subject=by_subject, by_group=by_group)
    if states is None:
        states = read_states(
            conn,
            meter.spec.aggregation,
            inner,
            level,
            meter.key,
            query.subjects,
            by_subject=by_subject,
            by_group=by_group,
            max_rows=None if limits is None else limits.max_rows,
        )
    extra = edge_states(CompiledMeter(meter), edges, _admitted(conn, meter.key))
    if isinstance(states, _Folded) and not extra and inner == bounds:
        rows = folded_rows(meter.spec.aggregation, states.states, bounds, query)
        if rows is not None:
            return rows
    return relabel(
        merge(meter.spec.aggregation, itertools.chain(states, extra), bounds, query, dimensions), query, bounds
    )


class _Folded:
    """States :func:`fold_subjects` folded into one per window and subject."""

    def __init__(self, states: builtins.list[BucketState]) -> None:
        self.states = states

    def __iter__(self) -> Iterator[BucketState]:
        return iter(self.states)


def _gauge_rows(
    conn: sqlite3.Connection, meter: Meter, query: MeterQuery, bounds: tuple[int, ...], now_us: int
) -> builtins.list[Row]:
    """TIME_WEIGHTED_SUM (``domain.meters.gauges``): per series, its carry (last reading before
    the range), its bucket states in the whole minutes and its readings in the partial ones,
    integrated per window. Read one subject at a time (the rollups' key order)."""
    inner = inner_bounds(query, bounds)
    pending: dict[tuple[str, str], builtins.list[BucketState]] = {}
    for key, state in carried(conn, meter.key, bounds[0], query.subjects).items():
        pending[key] = [state]
    edges = _edge_entries(conn, meter, query, gauge_edge_ranges(query, bounds))
    for state in gauge_points(CompiledMeter(meter), edges, _admitted(conn, meter.key)):
        pending.setdefault((state.subject, state.group_key), []).append(state)
    out = GaugeRows(query, bounds, tuple(sorted(meter.spec.group_by)), now_us)
    states = read_gauges(conn, meter.key, bucket_size(inner), inner[0], inner[-1], query.subjects)
    for subject, of_subject in itertools.groupby(states, key=lambda s: s.subject):
        for (_, group), series in series_of(of_subject).items():
            out.add(subject, group, series + pending.pop((subject, group), []))
    for (subject, group), series in pending.items():
        out.add(subject, group, series)
    return out.rows()


def _summarized(
    conn: sqlite3.Connection,
    meter: Meter,
    query: MeterQuery,
    inner: tuple[int, ...],
    *,
    by_subject: bool,
    by_group: bool,
) -> Iterable[BucketState] | None:
    """Bucket states from the summaries (``adapters.sqlite.summaries``) when they answer the
    query exactly and with fewer rows: not per group value, not filtered (but for a list of
    subjects), on quarter hours; per subject only when the range holds a whole UTC day (whole
    UTC months from the month rows, other days from the day rows, its edges from the rollups)."""
    if by_group or query.filters:
        return None
    segments = plan(inner)
    if segments is None:
        return None
    aggregation = meter.spec.aggregation
    if not by_subject:  # (a list of subjects is read per subject)
        folded = fold_wide(conn, aggregation, meter.key, segments, inner)
        return wide_states(conn, aggregation, meter.key, segments) if folded is None else folded
    if not has_day(segments):
        return None
    segments = with_months(segments)
    if aggregation in FOLDED:
        sets = subject_sets(conn, meter, inner, segments)
        folded = fold_subjects(conn, aggregation, meter.key, sets, query.subjects)
        if folded is not None:
            return _Folded(folded)
    parts: list[Iterable[BucketState]] = []
    for level, first, last in segments:
        if level in (DAY, MONTH):
            parts.append(subject_states(conn, aggregation, meter.key, level, first, last, query.subjects))
        else:
            rollups = read_states(conn, aggregation, (first, last), level, meter.key, query.subjects, by_group=False)
            parts.append(rollups)
    return itertools.chain.from_iterable(parts)


def subject_sets(
    conn: sqlite3.Connection, meter: Meter, inner: tuple[int, ...], segments: builtins.list[tuple[int, int, int]]
) -> builtins.list[Part]:
    """The row sets :func:`fold_subjects` reads per subject for ``inner``'s windows
    (``segments``: :func:`with_months` of its plan), empty ones left out; one window of a
    SUBTRACTABLE aggregation is covered as :func:`per_subject.cheapest` chooses, each ragged
    edge from at most half a day of rollups (:func:`per_subject.short_edges`)."""
    sets = occupied(conn, meter.key, _parts(segments, inner))
    if meter.spec.aggregation in SUBTRACTABLE and len(inner) == 2:  # one window: its sets all tagged inner[0]

        def cover(a: int, b: int, sign: int) -> builtins.list[Part]:
            parts: builtins.list[Part] = []
            for first, last, piece in short_edges(a, b):
                parts += _parts(with_months(plan((first, last)) or []), inner[:1], sign * piece)
            return occupied(conn, meter.key, parts)

        sets = cheapest(*inner, cover)
    return sets


def _parts(segments: Iterable[tuple[int, int, int]], inner: tuple[int, ...], sign: int = 1) -> builtins.list[Part]:
    """The row sets of ``segments`` (:func:`with_months`) for :func:`fold_subjects`: month and
    day rows from the summaries, shorter buckets from the rollups, each tagged with the start
    of the window it lies in (``inner``'s boundaries; the first window for a set before it)
    and ``sign`` (-1: subtracted, ``per_subject.cheapest``). Adjacent rollup segments of a
    window (a ragged edge of quarter hours, then hours) are one set of quarter-hour rollups:
    one index range per subject instead of two (every level holds every bucket)."""
    parts: builtins.list[Part] = []
    for level, first, last in segments:
        tag = inner[max(0, bisect.bisect_right(inner, first) - 1)]
        if level in (DAY, MONTH):
            parts.append(("summaries", level, first, last, tag, sign))
        elif parts and parts[-1][0] == "rollups" and parts[-1][3] == first and parts[-1][4] == tag:
            parts[-1] = ("rollups", QUARTER, parts[-1][2], last, tag, sign)
        else:
            parts.append(("rollups", level, first, last, tag, sign))
    return parts


def _edge_entries(
    conn: sqlite3.Connection, meter: Meter, query: MeterQuery, ranges: builtins.list[tuple[int, int]]
) -> builtins.list[LedgerEntry]:
    """The ledger entries of the partial minutes of an unaligned range (``ranges``:
    ``domain.meters.edges``) that the rollups on ``conn`` reflect: up to the aggregator's
    offset. Each range is under a minute, found through the ledger's (namespace, type, time)
    index."""
    if not ranges:
        return []
    if ranges[0][0] < hours_before(conn):
        raise InvalidInput(
            "a partial minute in an hour whose raw events were removed by retention cannot be answered"
            " exactly; ask for whole minutes",
            code="unaligned_range",
        )
    offset = stored_offset(conn)
    sql = edge_sql(len(query.subjects), every_type=is_builtin(meter.spec))
    entries = []
    for a, b in ranges:
        params = (meter.namespace, meter.spec.event_type, a, b, offset, *query.subjects)
        entries += [LedgerEntry(*row) for row in conn.execute(sql, params)]
    return entries


def edge_sql(subjects: int, *, every_type: bool = False) -> str:
    """The ledger entries of one event type within ``[from, to)`` up to an offset (parameters:
    namespace, type, from, to, offset, then ``subjects`` subject keys), found through the
    ledger's (namespace, type, time) index; with ``every_type`` (a built-in meter), of every
    type (the type parameter is ignored), through the (namespace, time) index that exists
    while built-in meters are on (``adapters.sqlite.schema.BUILTIN_INDEXES``)."""
    marks = ",".join(f"?{6 + i}" for i in range(subjects))
    by_subject = f" AND e.subject IN ({marks})" if subjects else ""
    index, of_type = ("events_by_time", "?2 = ?2") if every_type else ("events_by_type_time", "e.type = ?2")
    return (
        "SELECT e.seq, e.namespace, e.source, e.type, e.subject, e.time_us, e.raw FROM events e"
        f" INDEXED BY {index} LEFT JOIN corrections c ON c.seq = e.seq"
        f" WHERE e.namespace = ?1 AND {of_type} AND e.time_us >= ?3 AND e.time_us < ?4 AND e.seq <= ?5"
        f"{by_subject}{_COUNTS}"
    )


_COUNTS = (
    " AND coalesce(c.action, '') <> 'void' AND NOT EXISTS (SELECT 1 FROM corrections later"
    " WHERE later.original = coalesce(c.original, e.seq) AND later.seq > e.seq AND later.seq <= ?5)"
)
"""Only the version of each key that counts at the offset (parameter 5): not a void, not
superseded by a later correction (``domain.events.corrections``)."""


def _admitted(conn: sqlite3.Connection, meter: int) -> Callable[[str, str], bool]:
    """Whether the rollups admitted a group value (one over the cardinality cap never is)."""

    @functools.cache
    def known(dim: str, value: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM group_values WHERE meter = ? AND dim = ? AND value = ?", (meter, dim, value)
        ).fetchone()
        return row is not None

    return known
