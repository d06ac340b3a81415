"""The sink workers' store on ClickHouse (``ports.sink.SinkStore``): raw events and usage of
log partitions, exactly once, by the protocol of :mod:`.progress` (one stream per partition):

1. a write that does not start at the partition's stored position, does not end where a
   recorded range ends, or was folded for other meters than the live ones, is refused;
2. the range and the meters it covers are recorded before anything is inserted (a row
   versioned by the writer's epoch, so a zombie's row never hides the new holder's);
3. the writer's epoch is checked against the fence (``ports.sink.StreamFence``): a writer
   whose partition was taken over stops here, having inserted nothing. One that passed the
   check before the takeover had recorded its range first, so the new holder reads it and
   redoes exactly that range under the same tokens (docs/scale.md, "Zombie workers");
4. a live meter applied to the partition for the first time gets its backfill stream
   ``backfill:<meter>:<partition>`` over ``(0, to]``: ``to`` is where this range starts, or
   where it ends when a crash left it recorded without that meter (the range is then redone
   for its recorded meters only);
5. raw events (and, once they are in, copies of those that lie in a corrected hour kept past
   the raw table's TTL: :mod:`.kept`), applied corrections (:mod:`.corrections`), the batch's link of the partition's
   hash chain (:mod:`.chain`), rollup states, UNIQUE_COUNT values and new group values /
   subjects are inserted,
   each under the token ``<topic>:<partition>:<start>-<end>:<table>`` (a batch repeated after a
   crash is the same range, so the same tokens: ClickHouse drops what had landed);
6. the new position is recorded, with the receipt time of the newest event applied.

A backfill range goes the same way on its own stream: recorded, its rollups inserted under
its own tokens, then done. It folds the partition's raw events, so it sees what the raw
table still holds (``clickhouse.raw_retention``).

A partition written before backfills existed (a position but no backfill streams) gets
finished backfill streams for the meters live then: they counted from their creation on, as
before, and are not folded a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from meterline.adapters.clickhouse.chain import ChainLinks
from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.corrections import correction_rows, insert_corrections
from meterline.adapters.clickhouse.kept import keep_batch
from meterline.adapters.clickhouse.progress import Progress, ProgressTable
from meterline.adapters.clickhouse.schema import EVENTS, create
from meterline.adapters.clickhouse.usage import raw_rows, read_dims, write_usage
from meterline.domain.clock import SystemClock
from meterline.domain.meters.fold import LedgerEntry, Replay
from meterline.domain.meters.model import Meter
from meterline.ports.sink import Position, StreamBackfill, StreamFence

_PREFIX = "backfill:"


def backfill_stream(meter: int, stream: str) -> str:
    return f"{_PREFIX}{meter}:{stream}"


def split_backfill(name: str) -> tuple[int, str] | None:
    """``(meter, partition stream)`` of a partition's backfill stream (None for other streams)."""
    if not name.startswith(_PREFIX):
        return None
    meter, sep, stream = name[len(_PREFIX) :].partition(":")
    return (int(meter), stream) if sep and meter.isdigit() else None


class ClickHouseSink:
    def __init__(
        self,
        conn: Connection,
        meters: Callable[[], Sequence[Meter]],
        fence: StreamFence,
        *,
        dedupe_window: int = 10_000,
        raw_retention_seconds: int | None = None,
        now_us: Callable[[], int] | None = None,
    ):
        self._conn = conn
        self._meters = meters
        self._fence = fence
        self._progress = ProgressTable(conn)
        create(conn, dedupe_window, raw_retention_seconds)
        self._chain = ChainLinks(conn, now_us or SystemClock().now_us)

    def positions(self, streams: Sequence[str]) -> dict[str, Position]:
        stored = self._progress.read()
        out = {}
        for stream in streams:
            p = stored.get(stream, Progress(stream))
            out[stream] = Position(p.done, p.pending_end if p.pending else None)
        return out

    def known(self, meters: Sequence[int]) -> tuple[dict[tuple[int, str], set[str]], dict[int, set[str]]]:
        return read_dims(self._conn, meters)

    def write(
        self,
        stream: str,
        epoch: int,
        start: int,
        end: int,
        meters: frozenset[int],
        replay: Replay,
        entries: Sequence[LedgerEntry],
    ) -> bool:
        stored = self._progress.read()
        p = stored.get(stream, Progress(stream))
        if p.done != start or (p.pending and p.pending_end != end):
            return False
        if meters != {m.key for m in self._meters()}:
            return False  # folded for other meters than the live ones: a new meter's start would be lost
        if not p.pending:
            intent = Progress(stream, start, 0, end, tuple(sorted(meters)), p.version, p.applied_us)
            p = self._progress.write(intent, epoch)
        if not self._fence.holds(stream, epoch):
            return False  # taken over: the new holder redoes the recorded range, if it sees it
        self._start_backfills(stream, epoch, p, meters, stored)
        rows = raw_rows(entries, stream)
        self._conn.insert("events", EVENTS, rows, p.token("events"))
        keep_batch(self._conn, rows, p.token("kept_events"))  # after the insert: see .kept
        insert_corrections(self._conn, correction_rows(self._conn, stream, entries), p.token("corrections"))
        self._chain.link(stream, start, end, entries, p.token("chain"))
        write_usage(self._conn, replay, set(p.pending_meters), p)
        applied = max((e.received_us for e in entries), default=p.applied_us)
        self._progress.write(Progress(stream, end, 0, 0, (), p.version, max(applied, p.applied_us)), epoch)
        return True

    def backfills(self, streams: Mapping[str, int], meters: frozenset[int]) -> list[StreamBackfill]:
        live = {m.key for m in self._meters()}
        wanted = set(streams)
        stored = self._progress.read()
        for stream, epoch in sorted(streams.items()):
            p = stored.get(stream, Progress(stream))
            if (meters & live) and not self._fence.holds(stream, epoch):
                continue
            if self._start_backfills(stream, epoch, p, meters & live, stored):
                stored = self._progress.read()
        out = []
        for name, p in sorted(stored.items()):
            parsed = split_backfill(name)
            if parsed is None or parsed[0] not in live or parsed[1] not in wanted or p.done >= p.to:
                continue
            out.append(StreamBackfill(parsed[0], parsed[1], p.done, p.to, p.pending_end if p.pending else None))
        return out

    def entries(self, stream: str, after: int, end: int, limit: int) -> list[LedgerEntry]:
        return raw_entries(self._conn, stream, after, end, limit)

    def write_backfill(self, meter: int, stream: str, epoch: int, start: int, end: int, replay: Replay) -> bool:
        name = backfill_stream(meter, stream)
        p = self._progress.read().get(name)
        if p is None or p.done != start or end > p.to or (p.pending and p.pending_end != end):
            return False
        if not p.pending:
            p = self._progress.write(Progress(name, start, p.to, end, (meter,), p.version), epoch)
        if not self._fence.holds(stream, epoch):
            return False  # as in write: the partition's new holder goes on with this backfill
        write_usage(self._conn, replay, {meter}, p)
        self._progress.write(Progress(name, end, p.to, 0, (), p.version), epoch)
        return True

    def _start_backfills(
        self, stream: str, epoch: int, p: Progress, meters: frozenset[int], stored: dict[str, Progress]
    ) -> bool:
        """Step 4 of the module doc: a backfill stream for each meter first applied to
        ``stream`` (True when one was started)."""
        started = {parsed[0] for name in stored if (parsed := split_backfill(name)) and parsed[1] == stream}
        legacy = p.done > 0 and not started  # written before backfills: its meters count from creation
        for meter in sorted(meters - started):
            to = 0 if legacy else (p.pending_end if p.pending and meter not in p.pending_meters else p.done)
            self._progress.write(Progress(backfill_stream(meter, stream), 0, to), epoch)
        return bool(meters - started)


def raw_entries(conn: Connection, stream: str, after: int, end: int, limit: int) -> list[LedgerEntry]:
    """The raw events of ``stream`` with ``after < seq <= end``, in order, at most ``limit``."""
    sql = (
        "SELECT DISTINCT seq, namespace, source, type, subject, time_us, received_us, raw, corrects, correction"
        " FROM events"
        " WHERE stream = {s:String} AND seq > {a:UInt64} AND seq <= {e:UInt64} ORDER BY seq LIMIT {n:UInt32}"
    )
    rows = conn.rows(sql, {"s": stream, "a": after, "e": end, "n": limit})
    return [
        LedgerEntry(
            seq, ns, source, type_, subject, time_us, raw.encode(), received_us, None, corrects, record.encode()
        )
        for seq, ns, source, type_, subject, time_us, received_us, raw, corrects, record in rows
    ]
