"""The committed-usage stream: what live counters and alert rules receive from the aggregator.

Per aggregated batch, in one transaction of the usage store:

1. ``add_many`` — the batch's readings, once its rollups are written (inside the transaction);
   ``recount`` — the (meter, subject) pairs a correction recomputed;
2. ``prepare`` — just before COMMIT: the listener may read usage *as of this transaction*
   (``usage``) and returns the alerts it fired as data; the store writes them in the same
   transaction, so an alert commits exactly when the usage that crossed its threshold does;
3. ``after_commit`` — the batch is durable: publish in memory (before any reader waiting for
   this position is released), or ``rolled_back`` — forget everything since the last commit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from meterline.domain.meters.fold import Committed
from meterline.domain.meters.model import Meter
from meterline.domain.meters.query import MeterQuery, Row

__all__ = ["Committed", "Firing", "UsageListener", "UsageQueries"]


@dataclass(frozen=True, slots=True)
class Firing:
    """A fired alert to record once per (rule, customer, feature, key, period), with its
    deliveries (one per channel)."""

    event_id: str
    namespace: str
    rule_id: str
    customer: str
    feature: str
    key: str
    period_start_us: int
    payload: bytes
    now_us: int
    channels: tuple[str, ...]


class UsageQueries(Protocol):
    def query(self, meter: Meter, query: MeterQuery) -> list[Row]:
        """Answer a meter query from the usage store."""
        ...


class UsageListener(Protocol):
    def add_many(self, readings: Sequence[Committed]) -> None: ...

    def recount(self, recomputed: Collection[tuple[int, str]]) -> None:
        """The usage of these (meter key, subject) pairs was recomputed in this transaction (a
        correction): what depends on them is read again from the usage store in ``prepare``."""
        ...

    def prepare(self, usage: UsageQueries) -> Sequence[Firing]: ...

    def after_commit(self) -> None: ...

    def rolled_back(self) -> None: ...
