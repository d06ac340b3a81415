"""How far each consumed stream is applied, and the range being applied (``usage_progress``).

A stream is one ordered source of entries: the embedded-style live offset, one meter's
backfill, or one Kafka partition. Applying a range ``(start, end]`` of a stream goes:

1. record the intent: ``done = start, pending_end = end`` (and the meters it covers);
2. insert the range's rows, each table under the token ``<stream>:<start>-<end>``;
3. record ``done = end`` (no intent).

A crash after 1 leaves the intent: the next consumer must apply exactly ``(start, end]``
again for those meters, so its inserts carry the same tokens and ClickHouse drops the ones
that had already landed — nothing is counted twice, nothing is missed.

Rows are versions of a ReplacingMergeTree; a version is the writer's *epoch*
(``ports.sink.StreamFence``) above bit 40 and a counter below, so a row a zombie writer (an
older epoch) stores after the stream was taken over never replaces the new holder's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.schema import PROGRESS

EPOCH_SHIFT = 40
_COUNTER = (1 << EPOCH_SHIFT) - 1


@dataclass(frozen=True, slots=True)
class Progress:
    stream: str
    done: int = 0
    to: int = 0
    """A backfill's end (0 for streams without one)."""
    pending_end: int = 0
    pending_meters: tuple[int, ...] = ()
    version: int = 0
    applied_us: int = 0
    """The receipt time of the newest event applied so far (0: none, or not recorded)."""

    @property
    def pending(self) -> bool:
        """A range ``(done, pending_end]`` was being applied when the writer stopped."""
        return self.pending_end > self.done

    def token(self, table: str) -> str:
        return f"{self.stream}:{self.done}-{self.pending_end}:{table}"


class ProgressTable:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def read(self) -> dict[str, Progress]:
        rows = self._conn.rows(f"SELECT {', '.join(name for name, _ in PROGRESS)} FROM usage_progress FINAL")
        return {r[0]: Progress(r[0], r[1], r[2], r[3], tuple(r[4]), r[5], r[6]) for r in rows}

    def write(self, p: Progress, epoch: int = 0) -> Progress:
        """Store the next version of a stream's progress (one writer per stream: the holder of
        ``epoch``; a writer without a fence uses 0)."""
        p = replace(p, version=(epoch << EPOCH_SHIFT) | ((p.version & _COUNTER) + 1))
        row = [p.stream, p.done, p.to, p.pending_end, list(p.pending_meters), p.version, p.applied_us]
        self._conn.insert("usage_progress", PROGRESS, [row], token=f"{p.stream}:v{p.version}")
        return p
