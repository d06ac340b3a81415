"""Live usage counters: a meter's usage per subject in UTC minute, hour and day buckets
(``domain.meters.minutes``), fed by the sink workers from their applied batches, read by
entitlement values and checks instead of a usage-store query.

Exactly once rests on positions: per (stream, meter) the counters record how far they hold the
stream, and :meth:`UsageCounters.add` moves them only from the position its caller read, in
the same atomic step as the deltas. A range added twice (a worker redoing it after a crash, two
workers over a rebalance) finds the position moved and adds nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Protocol

Deltas = Mapping[tuple[int, str], Mapping[int, Decimal]]
"""(meter key, subject) -> minute since the epoch -> usage to add."""


class UsageCounters(Protocol):
    def positions(self, stream: str, meters: Sequence[int]) -> dict[int, int | None]:
        """How far each meter's counters hold ``stream`` (None: never fed; they count from the
        stream's start, so a store that lost them is rebuilt from there)."""
        ...

    def held(self, streams: Sequence[str], meter: int) -> dict[str, int | None]:
        """How far ``meter``'s counters hold each of ``streams`` (one round trip)."""
        ...

    def add(self, stream: str, moves: Mapping[int, tuple[int | None, int]], deltas: Deltas) -> bool:
        """Atomically add ``deltas`` (of the meters in ``moves`` only) and move each meter's
        position on ``stream`` from ``moves[meter][0]`` to ``moves[meter][1]``; False, changing
        nothing, when a position is not the one given any more."""
        ...

    def total(self, meter: int, subjects: Sequence[str], start_minute: int, end_minute: int) -> Decimal:
        """The meter's usage of ``subjects`` in the minutes ``[start_minute, end_minute)``."""
        ...

    def move_subject(self, meters: Sequence[int], subject: str, alias: str) -> int:
        """Add ``subject``'s counters of ``meters`` to ``alias``'s and drop them, each meter
        atomically (an erasure: the totals stay); how many counters moved."""
        ...
