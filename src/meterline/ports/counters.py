"""What the live entitlement counters and the alert rules (``services.counters``,
``services.alerts``) need from a store: the catalog they index, and the thread that applies
the committed-usage stream (``ports.stream``), on which they change their state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from meterline.domain.customers.model import Customer
from meterline.domain.entitlements.model import Entitlement, Feature, Grant
from meterline.domain.meters.model import Meter
from meterline.ports.stream import Firing, UsageListener

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CounterCatalog:
    """Live meters and customers, live entitlements with their grants, and features by id."""

    meters: list[Meter]
    customers: list[Customer]
    entitlements: list[Entitlement] = field(default_factory=list)
    grants: dict[str, list[Grant]] = field(default_factory=dict)
    features: dict[str, Feature] = field(default_factory=dict)


class CounterSource(Protocol):
    def catalog(self) -> CounterCatalog:
        """The whole committed catalog."""
        ...

    def for_entitlement(self, entitlement: Entitlement) -> CounterCatalog:
        """The live meters, and only this entitlement's customer and feature (no entitlements)."""
        ...


class StreamHost(Protocol):
    def serially(self, task: Callable[[], T], *, bounded: bool = True) -> T:
        """Run ``task`` on the thread that applies the committed-usage stream, never during a
        listener's callbacks, and wait for it. ``bounded`` False: the host's own follow-up
        work, never refused by a bound on queued writes."""
        ...

    def subscribe(self, listener: UsageListener) -> None:
        """Call ``listener`` for every aggregated batch (after those subscribed before it)."""
        ...

    def record(self, firings: Sequence[Firing]) -> int:
        """Record fired alerts outside an aggregated batch (in a transaction of their own);
        returns how many were new (each fires once per rule, customer, key and period)."""
        ...
