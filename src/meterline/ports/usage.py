"""The usage store: rollups per meter, subject, window and group, fed by the aggregator.

``apply`` writes one aggregated batch *together with* the consumer's new offset: both commit
or neither does, so a consumer that crashes re-reads from the stored offset and applies every
ledger entry exactly once. A batch carries the offset it was computed from; when the stored
offset (or the set of live meters) is no longer what it was computed against, ``apply``
writes nothing and answers False, and the consumer computes it again.

A store without transactions (ClickHouse) records a batch's range before writing it; after a
crash it reports that range as ``pending_end`` and accepts only a batch ending exactly there,
so the repeated writes are recognised and dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meterline.domain.meters.fold import LedgerEntry, Replay
from meterline.domain.meters.model import Meter
from meterline.domain.meters.query import MeterQuery, Row

__all__ = ["Backfill", "Batch", "Snapshot", "UsageStore"]


@dataclass(frozen=True, slots=True)
class Backfill:
    """A meter created after events existed: it still has to apply ``(done, to]``."""

    meter: int
    done: int
    to: int
    pending_end: int | None = None
    """Where the next batch of this backfill must end (a range left half-written), if anywhere."""


@dataclass(slots=True)
class Snapshot:
    """What the aggregator needs to evaluate: the live meters, their admitted group values and
    known subjects, the stored offset and the meters still backfilling."""

    offset: int
    meters: list[Meter]
    group_values: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    subjects: dict[int, set[str]] = field(default_factory=dict)
    backfills: list[Backfill] = field(default_factory=list)
    pending_end: int | None = None
    """Where the next live batch must end (a range left half-written), if anywhere."""


@dataclass(slots=True)
class Batch:
    """Ledger entries ``(start, end]`` replayed through ``meters`` (meter keys). ``backfill`` is
    the one meter whose backfill offset moves; None for the live offset."""

    start: int
    end: int
    meters: frozenset[int]
    replay: Replay
    backfill: int | None = None
    entries: Sequence[LedgerEntry] = ()
    versions: frozenset[tuple[int, int]] = frozenset()
    """Each meter's key and the time its definition last changed (``Meter.updated_us``), as
    the batch was computed: a store whose meters can be redefined (a new ``groupBy``) refuses
    a batch computed with an older definition."""
    """A live batch's ledger entries ``(start, end]``: a store without the ledger at hand keeps
    what it needs of them to answer partial minutes (``domain.meters.edges``). Every entry
    passes through exactly one live batch; backfill batches carry none."""


class UsageStore(Protocol):
    def snapshot(self) -> Snapshot: ...

    def apply(self, batch: Batch) -> bool:
        """Write the batch and move its offset to ``batch.end``, atomically (see the module doc)."""
        ...

    def query(self, meter: Meter, query: MeterQuery) -> list[Row]: ...
