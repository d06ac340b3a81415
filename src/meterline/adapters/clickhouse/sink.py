"""The sink workers' store on ClickHouse (``ports.sink.SinkStore``): raw events and usage of
log partitions, exactly once, by the protocol of :mod:`.progress` (one stream per partition):

1. a write that does not start at the partition's stored position, or does not end where a
   recorded range ends, is refused;
2. the range and the meters it covers are recorded before anything is inserted;
3. raw events, rollup states, UNIQUE_COUNT values and new group values / subjects are inserted,
   each under the token ``<topic>:<partition>:<start>-<end>:<table>`` (a batch repeated after a
   crash is the same range, so the same tokens: ClickHouse drops what had landed);
4. the new position is recorded, with the receipt time of the newest event applied.
"""

from __future__ import annotations

from collections.abc import Sequence

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.progress import Progress, ProgressTable
from meterline.adapters.clickhouse.schema import EVENTS, create
from meterline.adapters.clickhouse.usage import read_dims, write_usage
from meterline.domain.meters.fold import LedgerEntry, Replay
from meterline.ports.sink import Position


class ClickHouseSink:
    def __init__(self, conn: Connection, *, dedupe_window: int = 10_000, raw_retention_seconds: int | None = None):
        self._conn = conn
        self._progress = ProgressTable(conn)
        create(conn, dedupe_window, raw_retention_seconds)

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
        self, stream: str, start: int, end: int, meters: frozenset[int], replay: Replay, entries: Sequence[LedgerEntry]
    ) -> bool:
        p = self._progress.read().get(stream, Progress(stream))
        if p.done != start or (p.pending and p.pending_end != end):
            return False
        if not p.pending:
            p = self._progress.write(Progress(stream, start, 0, end, tuple(sorted(meters)), p.version, p.applied_us))
        rows = [
            (e.namespace, e.source, e.type, e.subject, e.time_us, e.received_us, e.raw.decode(), stream, e.seq)
            for e in entries
        ]
        self._conn.insert("events", EVENTS, rows, p.token("events"))
        write_usage(self._conn, replay, set(p.pending_meters), p)
        applied = max((e.received_us for e in entries), default=p.applied_us)
        self._progress.write(Progress(stream, end, 0, 0, (), p.version, max(applied, p.applied_us)))
        return True
