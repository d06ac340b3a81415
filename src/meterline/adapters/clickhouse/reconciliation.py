"""Reconciliation counts of scale mode from ClickHouse: the raw ``events`` table the sink
workers wrote (the ledger as applied) against the usage tables (``ports.reconciliation``).

**Snapshots.** The workers apply each partition (stream) in ranges: intent recorded, raw events
and rollups inserted, then the new position (:mod:`.progress`). So a read of the rollups holds
every stream up to its position and possibly part of a range being applied. A snapshot reads
the progress before and after the counts: ``done`` (before) is what the counts reflect, and
``upper`` (the end of any range recorded or applied by the second read) what the rollups may
hold beyond it — counted as ``in_flight``, never as unexplained. Raw events are always read up
to ``done`` (``seq <= done`` per stream). A snapshot is read again, a few times, until no range
moves under it. The report's position is the sum of ``done`` over the streams; each stream's
position only grows, so one sum names one set of positions, and the adapter keeps the
snapshots it answered to read the ledger at exactly that one later (:meth:`ledger_check`).

**Corrections.** The workers fold no correction into the rollups (:mod:`.corrections`): the
rollups hold every original, and queries answer corrected hours from the raw events. What the
rollups count for a meter is therefore compared as queries read it: the rollups, less what the
originals of its corrected (subject, hour) cells add, plus what the versions that count there
add (:meth:`counted`). In the ledger, a key's versions are its original and the correction
entries that supersede it in the same stream; only the last correction of a version counts.

**Backfills** of new meters are waited for by the caller, as usage reads wait for them.

**Memory.** The ledger replay reads the range a day of event time at a time and folds it as it
goes; the correction entries of the namespace (few) are read whole.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.corrections import HOUR, hour_key, hour_keys
from meterline.adapters.clickhouse.progress import Progress, ProgressTable
from meterline.adapters.clickhouse.usage import read_dims
from meterline.domain.events.corrections import is_void_record
from meterline.domain.integrity.reconcile import (
    BilledWindow,
    Change,
    Counts,
    Invoiced,
    Version,
    add_count,
    billed_changes,
    expected,
    quarter,
    standing,
)
from meterline.domain.meters.fold import LedgerEntry
from meterline.domain.meters.model import Aggregation, Meter
from meterline.ports.reconciliation import QUARTER, Counted, LedgerCheck

_US = 1_000_000
_KEPT = 64
"""Snapshots remembered for :meth:`ClickHouseReconciliationCounts.ledger_check`."""
_ATTEMPTS = 3
SLICE = 86_400
"""Seconds of event time the ledger replay reads at once."""
_COLUMNS = "stream, seq, namespace, source, type, subject, time_us, received_us, raw, corrects"
Row = tuple[str, LedgerEntry]
"""A raw event with its stream; ``LedgerEntry.correction`` is the seq it supersedes."""


@dataclass(frozen=True)
class Snapshot:
    done: dict[str, int]
    """Per stream: every raw event up to here is applied, in the rollups too."""
    upper: dict[str, int]
    """Per stream: the rollups may hold events up to here (a range being applied)."""
    applied_us: int | None

    @property
    def position(self) -> int:
        return sum(self.done.values())

    @property
    def moving(self) -> bool:
        return self.upper != self.done


class ClickHouseReconciliationCounts:
    """``counted``, ``ledger_check`` and ``billed_changes`` of the port; receipts (dead letters,
    the quarantine) and invoices are PostgreSQL's (``adapters.postgres.reconciliation``)."""

    def __init__(self, conn: Connection, pause: float = 0.05, sleep: Callable[[float], None] = time.sleep) -> None:
        self._conn = conn
        self._progress = ProgressTable(conn)
        self._pause = pause
        self._sleep = sleep
        self._kept: OrderedDict[int, Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def counted(self, namespace: str, meters: Sequence[Meter], start: int, end: int) -> Counted:
        """Accepted events per (type, quarter hour) and what each meter's usage tables hold per
        quarter hour, from one snapshot (see the module doc)."""
        for attempt in range(_ATTEMPTS):
            before = self._progress.read()
            accepted = self._accepted(namespace, start, end, _snapshot(before, before))
            stored = {m.slug: self._stored(m, start, end) for m in meters}
            snap = _snapshot(before, self._progress.read())
            if not snap.moving or attempt == _ATTEMPTS - 1:
                break
            self._sleep(self._pause)
        metered = self._corrected(namespace, meters, start, end, snap, stored)
        with self._lock:
            kept = self._kept.pop(snap.position, None)
            if kept is not None:  # the same positions, read by another request: what either saw may be in flight
                upper = {k: max(v, kept.upper.get(k, 0)) for k, v in snap.upper.items()}
                snap = Snapshot(snap.done, {**kept.upper, **upper}, snap.applied_us)
            self._kept[snap.position] = snap
            while len(self._kept) > _KEPT:
                self._kept.popitem(last=False)
        return Counted(snap.position, snap.applied_us, accepted, metered)

    def snapshot(self, position: int) -> Snapshot:
        """The snapshot :meth:`counted` answered ``position`` from (the current one if none)."""
        with self._lock:
            kept = self._kept.get(position)
        if kept is not None:
            return kept
        now = self._progress.read()
        return _snapshot(now, now)

    def ledger_check(
        self, namespace: str, meters: Sequence[Meter], start: int, end: int, through: int, invoiced: Invoiced
    ) -> LedgerCheck:
        """The raw events of ``[start, end)`` up to the snapshot of ``through``: accepted,
        voided, counting, expected, where billing stands, and what the ranges in flight add.
        Read a slice of event time at a time (:data:`SLICE`) and folded as it goes, so memory
        holds one slice's raw events and the fold's per-bucket states, never the whole range."""
        snap = self.snapshot(through)
        check = LedgerCheck()
        chains = _Chains(self._corrections(namespace, snap))
        roots = {(s, chains.root(s, void.seq)): (s, void) for s, void in chains.voids()}
        by_type: dict[str, list[str]] = {}
        for m in meters:
            by_type.setdefault(m.spec.event_type, []).append(m.slug)

        def counting() -> Iterator[LedgerEntry]:
            for a in range(start, end, SLICE):
                for stream, e in self._rows(namespace, snap, (a * _US, min(a + SLICE, end) * _US)):
                    if not e.correction:
                        add_count(check.accepted, (e.type, quarter(e.time_us)))
                        if (stream, e.seq) in roots:
                            _voided(check, by_type, invoiced, e, roots[(stream, e.seq)][1])
                    if chains.counts(stream, e):
                        add_count(check.counting, (e.type, quarter(e.time_us)))
                        where = standing(invoiced.of(e.subject), e.time_us, e.received_us, counted=True)
                        _add_all(getattr(check, where), by_type.get(e.type, ()), e.time_us)
                        yield e._replace(correction=0)

        admitted, _ = read_dims(self._conn, [m.key for m in meters])
        check.expected.update(expected(meters, counting(), admitted))
        check.in_flight.update(expected(meters, self._in_flight(namespace, snap, start, end), admitted))
        return check

    def billed_changes(
        self, namespace: str, meters: Sequence[Meter], windows: Sequence[BilledWindow], through: int
    ) -> list[dict[str, Change]]:
        """As the embedded store's: the chains of the keys with a version received after the
        earliest window's snapshot (originals of the windows' range and meters' types, and
        corrections of any key), each as far as the snapshot of ``through`` reaches."""
        if not windows or not meters:
            return [{} for _ in windows]
        snap = self.snapshot(through)
        since = min(w.snapshot_us for w in windows)
        span = (min(w.start_us for w in windows), max(w.end_us for w in windows))
        chains = _Chains(self._corrections(namespace, snap))
        types = sorted({m.spec.event_type for m in meters})
        late = self._rows(namespace, snap, span, "AND corrects = 0 AND received_us > {since:Int64}"
                          " AND has({types:Array(String)}, type)", {"since": since, "types": types})  # fmt: skip
        roots = {(s, e.seq) for s, e in late}
        roots |= chains.received_since(since)
        found = {(s, e.seq): e for s, e in self._originals(namespace, sorted(roots))}
        versions = [[_version(found[r], ""), *chains.of(*r)] for r in sorted(roots) if r in found]
        return billed_changes(namespace, meters, windows, versions)

    # -- reads -------------------------------------------------------------------------------

    def _accepted(self, namespace: str, start: int, end: int, snap: Snapshot) -> dict[tuple[str, int], int]:
        reflected, params = _reflected(snap.done)
        if not reflected:
            return {}
        params.update({"ns": namespace, "a": start * _US, "b": end * _US})
        sql = (
            f"SELECT type, intDiv(time_us, {QUARTER * _US}) * {QUARTER} AS q, uniqExact(stream, seq) FROM events"
            " WHERE namespace = {ns:String} AND corrects = 0 AND time_us >= {a:Int64} AND time_us < {b:Int64}"
            f" AND ({reflected}) GROUP BY type, q"
        )
        return {(t, int(q)): int(n) for t, q, n in self._conn.rows(sql, params)}

    def _stored(self, meter: Meter, start: int, end: int) -> dict[int, int]:
        """Per quarter hour, the events the meter's usage table holds (distinct values per
        subject and group for UNIQUE_COUNT; nothing for APPROX_UNIQUE_COUNT, as embedded)."""
        params = {"m": meter.key, "lv": QUARTER, "a": start, "b": end}
        where = "meter = {m:UInt64} AND level = {lv:UInt32} AND bucket >= {a:Int64} AND bucket < {b:Int64}"
        aggregation = meter.spec.aggregation
        if aggregation is Aggregation.APPROX_UNIQUE_COUNT:
            return {}
        if aggregation is Aggregation.UNIQUE_COUNT:
            sql = (
                "SELECT bucket, count() FROM (SELECT DISTINCT subject, bucket, group_key, value FROM usage_uniques"
                f" WHERE {where}) GROUP BY bucket"
            )
        else:
            table = "usage_gauges" if aggregation is Aggregation.TIME_WEIGHTED_SUM else "usage_rollups"
            sql = f"SELECT bucket, sum(count) FROM {table} WHERE {where} GROUP BY bucket"
        return {int(b): int(n) for b, n in self._conn.rows(sql, params) if n}

    def _corrected(
        self,
        namespace: str,
        meters: Sequence[Meter],
        start: int,
        end: int,
        snap: Snapshot,
        stored: dict[str, dict[int, int]],
    ) -> dict[str, dict[int, int]]:
        """``stored`` as queries read it: in each meter's corrected (subject, hour) cells, less
        what the originals there add to the rollups, plus what the versions that count add."""
        chains = _Chains(self._corrections(namespace, snap))
        originals = self._originals(namespace, chains.superseded_originals())
        cells = chains.cells(start * _US, end * _US, {(s, e.seq): e for s, e in originals})
        if not cells:
            return stored
        where = f"AND has({{cx:Array(String)}}, {hour_key('intDiv(time_us, 1000000)')})"
        rows = self._rows(namespace, snap, (start * _US, end * _US), where, {"cx": hour_keys(cells)})
        admitted, _ = read_dims(self._conn, [m.key for m in meters])
        # outside these cells the originals are the versions that count: any set of cells holding
        # every corrected version gives the same answer
        less = expected(meters, [e for _, e in rows if not e.correction], admitted)
        more = expected(meters, [e._replace(correction=0) for s, e in rows if chains.counts(s, e)], admitted)
        out = {slug: dict(per) for slug, per in stored.items()}
        for sign, counts in ((-1, less), (1, more)):
            for (slug, bucket), n in counts.items():
                per = out.setdefault(slug, {})
                per[bucket] = per.get(bucket, 0) + sign * n
        return out

    def _in_flight(self, namespace: str, snap: Snapshot, start: int, end: int) -> list[LedgerEntry]:
        """The originals of the ranges being applied when the snapshot was read (``(done, upper]``)."""
        moving = {s: (snap.done.get(s, 0), u) for s, u in snap.upper.items() if u > snap.done.get(s, 0)}
        if not moving:
            return []
        params: dict[str, Any] = {"ns": namespace, "a": start * _US, "b": end * _US}
        ranges = []
        for i, (stream, (low, high)) in enumerate(sorted(moving.items())):
            params.update({f"s{i}": stream, f"l{i}": low, f"h{i}": high})
            ranges.append(f"(stream = {{s{i}:String}} AND seq > {{l{i}:UInt64}} AND seq <= {{h{i}:UInt64}})")
        sql = (
            f"SELECT DISTINCT {_COLUMNS} FROM events WHERE namespace = {{ns:String}} AND corrects = 0"
            f" AND time_us >= {{a:Int64}} AND time_us < {{b:Int64}} AND ({' OR '.join(ranges)})"
        )
        return [e for _, e in _entries(self._conn.rows(sql, params))]

    def _rows(
        self,
        namespace: str,
        snap: Snapshot,
        span: tuple[int, int],
        more: str = "",
        params_more: dict[str, Any] | None = None,
    ) -> list[Row]:
        """Raw events of the namespace with event times in ``span`` (µs) up to the snapshot."""
        reflected, params = _reflected(snap.done)
        if not reflected:
            return []
        params.update({"ns": namespace, "a": span[0], "b": span[1], **(params_more or {})})
        sql = (
            f"SELECT DISTINCT {_COLUMNS} FROM events WHERE namespace = {{ns:String}}"
            f" AND time_us >= {{a:Int64}} AND time_us < {{b:Int64}} AND ({reflected}) {more} ORDER BY stream, seq"
        )
        return _entries(self._conn.rows(sql, params))

    def _corrections(self, namespace: str, snap: Snapshot) -> list[Row]:
        """Every correction entry of the namespace up to the snapshot (any event time: few)."""
        reflected, params = _reflected(snap.done)
        if not reflected:
            return []
        params["ns"] = namespace
        sql = (
            f"SELECT DISTINCT {_COLUMNS} FROM events WHERE namespace = {{ns:String}} AND corrects != 0"
            f" AND ({reflected}) ORDER BY stream, seq"
        )
        return _entries(self._conn.rows(sql, params))

    def _originals(self, namespace: str, keys: list[tuple[str, int]]) -> list[Row]:
        if not keys:
            return []
        sql = (
            f"SELECT DISTINCT {_COLUMNS} FROM events WHERE namespace = {{ns:String}} AND corrects = 0"
            " AND has({k:Array(Tuple(String, UInt64))}, (stream, seq))"
        )
        return _entries(self._conn.rows(sql, {"ns": namespace, "k": keys}))


class _Chains:
    """The correction entries of a namespace: which versions count, each key's chain."""

    def __init__(self, corrections: Iterable[Row]) -> None:
        self.entries = {(s, e.seq): e for s, e in sorted(corrections, key=lambda r: (r[0], r[1].seq))}
        last: dict[tuple[str, int], int] = {}
        for (s, seq), e in self.entries.items():
            last[(s, e.correction)] = seq  # in log order: only the last correction of a version counts
        self._effective = {(s, seq) for (s, _), seq in last.items()}
        self._superseded = set(last)
        self._chains: dict[tuple[str, int], list[LedgerEntry]] = {}
        for (s, seq), e in self.entries.items():
            if (s, seq) in self._effective:
                self._chains.setdefault((s, self.root(s, seq)), []).append(e)

    def counts(self, stream: str, e: LedgerEntry) -> bool:
        """Whether a raw event is a version that counts: not superseded, not a void, not an
        earlier correction of a version corrected again."""
        if (stream, e.seq) in self._superseded:
            return False
        return not e.correction or ((stream, e.seq) in self._effective and not is_void_record(e.raw))

    def root(self, stream: str, seq: int) -> int:
        """The original a version's chain starts from."""
        while (stream, seq) in self.entries:
            seq = self.entries[(stream, seq)].correction
        return seq

    def received_since(self, since_us: int) -> set[tuple[str, int]]:
        """The keys (stream, original) with a correction received after ``since_us``."""
        return {(s, self.root(s, seq)) for (s, seq), e in self.entries.items() if e.received_us > since_us}

    def voids(self) -> list[Row]:
        return [(s, e) for (s, seq), e in self.entries.items() if (s, seq) in self._effective and is_void_record(e.raw)]

    def of(self, stream: str, root: int) -> list[Version]:
        """The effective corrections of the key whose original is ``root``, in log order."""
        return [_version(e, "void" if is_void_record(e.raw) else "amend") for e in self._chains.get((stream, root), [])]

    def superseded_originals(self) -> list[tuple[str, int]]:
        """The originals (stream, seq) an effective correction supersedes."""
        return sorted(
            {(s, e.correction) for (s, seq), e in self.entries.items() if (s, seq) in self._effective}
            - self.entries.keys()
        )

    def cells(self, start_us: int, end_us: int, originals: dict[tuple[str, int], LedgerEntry]) -> set[tuple[str, int]]:
        """The (subject, hour) cells in ``[start_us, end_us)`` of every version an effective
        correction took out (``originals``: those it supersedes that are no correction) or put
        in: the hours queries answer from the raw events."""
        out = set()
        for (s, seq), e in self.entries.items():
            if (s, seq) not in self._effective:
                continue
            was = self.entries.get((s, e.correction)) or originals.get((s, e.correction))
            for v in (e, was):
                if v is not None and start_us <= v.time_us < end_us:
                    out.add((v.subject, v.time_us // (HOUR * _US) * HOUR))
        return out


def _snapshot(before: dict[str, Progress], after: dict[str, Progress]) -> Snapshot:
    streams = {s for s in before.keys() | after.keys() if not s.startswith("backfill:")}
    done = {s: before[s].done if s in before else 0 for s in streams}
    upper = {}
    for s in streams:
        ends = [done[s]] + [
            p.pending_end if p.pending else p.done for p in (before.get(s), after.get(s)) if p is not None
        ]
        upper[s] = max(ends)
    stamps = [before[s].applied_us for s in streams if s in before and before[s].applied_us > 0]
    return Snapshot(done, upper, min(stamps) if stamps else None)


def _reflected(done: dict[str, int]) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    parts = []
    for i, (stream, seq) in enumerate(sorted(done.items())):
        if seq:
            params[f"rs{i}"], params[f"rd{i}"] = stream, seq
            parts.append(f"(stream = {{rs{i}:String}} AND seq <= {{rd{i}:UInt64}})")
    return " OR ".join(parts), params


def _entries(rows: Iterable[tuple[Any, ...]]) -> list[Row]:
    """Raw rows as entries, one per log record (stream, seq): a record's row is never counted
    twice, even while two differing rows of it stand in the table (the first read is kept)."""
    out: dict[tuple[str, int], Row] = {}
    for stream, seq, ns, source, type_, subject, t, received, raw, c in rows:
        entry = LedgerEntry(int(seq), ns, source, type_, subject, int(t), raw.encode(), int(received), None, int(c))
        out.setdefault((stream, int(seq)), (stream, entry))
    return list(out.values())


def _version(e: LedgerEntry, action: str) -> Version:
    return Version(e.seq, e.source, e.type, e.subject, e.time_us, e.raw, e.received_us, action)


def _voided(
    check: LedgerCheck, by_type: dict[str, list[str]], invoiced: Invoiced, root: LedgerEntry, void: LedgerEntry
) -> None:
    """A void of a key whose original is ``root``: counted in the original's bucket, and where
    the void stands with billing (an adjustment pending or made, when its window was billed)."""
    add_count(check.voided, (root.type, quarter(root.time_us)))
    where = standing(invoiced.of(void.subject), void.time_us, void.received_us, counted=False)
    if where:
        _add_all(getattr(check, where), by_type.get(root.type, ()), root.time_us)


def _add_all(into: Counts, slugs: Iterable[str], time_us: int) -> None:
    for slug in slugs:
        add_count(into, (slug, quarter(time_us)))
