"""Entitlement values and billing usage read straight from the usage store, for nodes that
keep no live counters (API nodes of scale mode: the usage is the sink workers' rollups).

Every call reads the committed catalog (customer, entitlement, feature, grants, meter) and
asks the usage store for the period's usage, so any number of nodes answer the same: no
in-memory index can miss a change made through another node. A value is as fresh as the
rollups it reads (the request's freshness record says which, ``runtime.freshness``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

from meterline.domain.billing import UsageKey
from meterline.domain.billing.records import UsageAsk
from meterline.domain.clock import Clock
from meterline.domain.customers.model import Customer
from meterline.domain.entitlements.credit import Segment
from meterline.domain.entitlements.model import Entitlement
from meterline.domain.entitlements.value import ZERO, Value
from meterline.domain.errors import NotFound
from meterline.domain.meters.model import Meter
from meterline.domain.meters.query import MeterQuery
from meterline.domain.periods import Period
from meterline.ports.customers import CustomerRepository
from meterline.ports.entitlements import EntitlementRepository, FeatureRepository, GrantRepository
from meterline.ports.meters import MeterCatalog, UsageReader
from meterline.services.counters import Live, live_counter, read_usage, span_usage
from meterline.services.entitlement_balances import StartCache

MINUTE_US = 60_000_000


class QueriedEntitlementUsage:
    """:class:`~meterline.ports.entitlement_usage.EntitlementUsage` over the catalog and the
    usage store: each value is one usage query for the current period."""

    def __init__(
        self,
        customers: CustomerRepository,
        entitlements: EntitlementRepository,
        features: FeatureRepository,
        grants: GrantRepository,
        meters: MeterCatalog,
        usage: UsageReader,
        clock: Clock,
    ) -> None:
        self._customers = customers
        self._entitlements = entitlements
        self._features = features
        self._grants = grants
        self._meters = meters
        self._usage = usage
        self._clock = clock
        self._starts = StartCache()

    def customer_key(self, namespace: str, key_or_subject: str) -> str | None:
        customer = self._customer(namespace, key_or_subject)
        if customer is None:
            customer = self._customers.by_subject(namespace, key_or_subject)
        return None if customer is None else customer.key

    def value(
        self, namespace: str, customer_key: str, feature_key: str, *, project: bool = True
    ) -> tuple[Entitlement | None, Value | None]:
        customer = self._customer(namespace, customer_key)
        if customer is None:
            return None, None
        ent = next(
            (e for e in self._entitlements.list(namespace, customer_id=customer.id) if e.feature_key == feature_key),
            None,
        )
        if ent is None:
            return None, None
        if ent.spec.type == "static":
            return ent, Value(True, config=ent.spec.config)
        if ent.spec.type == "boolean":
            return ent, Value(True)
        live = self.live(ent, customer)
        if live is None:  # metered on a meter that no longer exists
            return ent, Value(False)
        return ent, self.value_of(live, self._clock.now_us(), project=project)

    def value_of(self, live: Live, now_us: int, *, project: bool = True) -> Value:
        """A metered entitlement's value at ``now_us``: the credit engine over its grants, with
        the current period's usage from one query."""
        usage = read_usage(self._usage, live, live.period_at(now_us))
        return live.burndown(self._starts).value(now_us, self._rollups(live), live_usage=usage, project=project)

    def period_at(self, ent: Entitlement, t_us: int) -> Period | None:
        live = self._live_of(ent)
        return None if live is None else live.period_at(t_us)

    def value_at(self, ent: Entitlement, t_us: int) -> Value | None:
        """Usage from the period's start through the minute holding ``t_us``."""
        live = self._live_of(ent)
        return None if live is None else live.burndown(self._starts).value(t_us, self._rollups(live))

    def state_at_reset(self, ent: Entitlement, at_us: int, preserve: bool) -> tuple[Decimal, dict[str, Decimal]]:
        live = self._live_of(ent)
        if live is None:
            return ZERO, {}
        return live.burndown(self._starts).state_at_reset(at_us, self._rollups(live), preserve)

    def segments(self, ent: Entitlement, start_us: int, end_us: int) -> list[Segment] | None:
        live = self._live_of(ent)
        return None if live is None else live.burndown(self._starts).timeline(start_us, end_us, self._rollups(live))

    def _rollups(self, live: Live) -> Callable[[int, int], Decimal]:
        def usage(start_us: int, end_us: int) -> Decimal:
            return span_usage(self._usage, live, start_us, end_us)

        return usage

    def windows(self, ent: Entitlement, query: MeterQuery) -> list[tuple[int, int, Decimal]] | None:
        live = self._live_of(ent)
        if live is None:
            return None
        filters = tuple((d, (v,), False) for d, v in live.filters)
        q = dataclasses.replace(query, subjects=live.subjects, group_by=(), filters=filters)
        return [(r.window_start_us, r.window_end_us, r.value) for r in self._usage.query(live.meter, q)]

    def _customer(self, namespace: str, key: str) -> Customer | None:
        try:
            return self._customers.get(namespace, key)
        except NotFound:
            return None

    def _live_of(self, ent: Entitlement) -> Live | None:
        """The counting rules of a live metered entitlement (None for any other)."""
        if ent.deleted_us is not None or ent.spec.type != "metered":
            return None
        customer = self._customer(ent.namespace, ent.customer_id)
        return None if customer is None else self.live(ent, customer)

    def live(self, ent: Entitlement, customer: Customer) -> Live | None:
        """How ``ent`` of ``customer`` counts (meter, subjects, filters, periods, grants), read
        from the catalog; None when it is not metered on a meter that exists."""
        try:
            feature = self._features.get(ent.namespace, ent.feature_id)
        except NotFound:
            return None
        meters: dict[tuple[str, str], Meter] = {}
        if feature.spec.meter_slug is not None:
            try:
                meter = self._meters.get(ent.namespace, feature.spec.meter_slug)
                meters[(ent.namespace, meter.spec.slug)] = meter
            except NotFound:
                return None
        grants = self._grants.list(ent.namespace, ent.id, include_voided=True)  # a void ends a grant at its time
        return live_counter(ent, customer, feature, meters, grants, self._clock.now_us())


class QueriedPeriodUsage:
    """:class:`~meterline.ports.billing_usage.PeriodUsage` over meter queries of the usage
    store: one query per (window, meter, dimension), the customer's subjects combined."""

    def __init__(self, usage: UsageReader) -> None:
        self._usage = usage

    def usage(self, meters: Mapping[str, Meter], asks: Sequence[UsageAsk]) -> list[dict[UsageKey, Decimal]]:
        return [self._answer(meters, ask) for ask in asks]

    def _answer(self, meters: Mapping[str, Meter], ask: UsageAsk) -> dict[UsageKey, Decimal]:
        out: dict[UsageKey, Decimal] = {}
        for slug, dim in ask.queries:
            if dim is None:
                out[(slug, None)] = ZERO
            if not ask.subjects:  # no subject: no usage (an empty filter would mean every subject)
                continue
            query = MeterQuery(
                ask.start_us // 1_000_000,
                ask.end_us // 1_000_000,
                subjects=tuple(ask.subjects),
                group_by=() if dim is None else (dim,),
                combine_subjects=True,
            )
            for row in self._usage.query(meters[slug], query):
                if dim is None:
                    out[(slug, None)] = row.value
                else:
                    out[(slug, ((dim, row.group_by.get(dim) or ""),))] = row.value
        return out
