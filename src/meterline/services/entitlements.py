"""Entitlements: who may use which feature, under which limit and usage period.

The rules (validation, the feature and meter an entitlement needs, where its periods are
anchored, resets) are applied here before anything is written; the repositories only store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

import msgspec
from ulid import ULID

from meterline.domain.clock import Clock, from_us
from meterline.domain.customers.model import Customer
from meterline.domain.entitlements.model import Entitlement, EntitlementInput, Feature, validate_entitlement
from meterline.domain.entitlements.rules import anchor_us, check_periods, measured_from_us, reset
from meterline.domain.errors import InvalidInput, NotFound
from meterline.domain.meters.model import Aggregation
from meterline.domain.periods import recurrence
from meterline.ports.customers import CustomerRepository
from meterline.ports.entitlements import EntitlementRepository, FeatureRepository
from meterline.ports.meters import MeterCatalog


class EntitlementService:
    def __init__(
        self,
        entitlements: EntitlementRepository,
        features: FeatureRepository,
        customers: CustomerRepository,
        meters: MeterCatalog,
        clock: Clock,
    ) -> None:
        self._entitlements = entitlements
        self._features = features
        self._customers = customers
        self._meters = meters
        self._clock = clock
        self.changed: Callable[[Entitlement], None] = lambda ent: None
        """Called with an entitlement as stored after a write that changed its value without
        usage: its creation, a reset, a grant added or voided (scale mode evaluates the alert
        rules then, as OpenMeter's balance worker does; embedded mode's counters see it)."""

    def create(self, namespace: str, owner: str, inp: EntitlementInput, *, replace: bool = False) -> Entitlement:
        """Entitle customer ``owner`` (key, id or subject key) to a feature; ``replace`` swaps
        out its live entitlement to that feature (OpenMeter's override) in one write."""
        validate_entitlement(inp)
        customer = self._customer(namespace, owner)
        feature = self._features.get(namespace, inp.feature_id or inp.feature_key or "")
        if inp.feature_key and feature.key != inp.feature_key:
            raise InvalidInput("featureKey and featureId name different features", code="invalid_entitlement")
        if inp.type == "metered":
            self._check_meter(namespace, feature)
        now = self._clock.now_us()
        anchor = anchor_us(inp, customer.timezone, now)
        if inp.type == "metered" and inp.usage_period is not None:
            check_periods(inp.usage_period.interval, anchor, customer.timezone, now)
        measured = measured_from_us(inp, anchor, customer.timezone, now) if inp.type == "metered" else anchor
        ent = Entitlement(
            str(ULID()),
            namespace,
            customer.id,
            customer.key,
            feature.id,
            feature.key,
            inp,
            anchor,
            measured,
            now,
            measured_from_us=measured if inp.type == "metered" else None,
        )
        stored = self._entitlements.add(ent, replace=replace)
        self.changed(stored)
        return stored

    def _check_meter(self, namespace: str, feature: Feature) -> None:
        if feature.spec.meter_slug is None:
            raise InvalidInput(
                f"feature {feature.key!r} has no meter; a metered entitlement needs one", code="invalid_entitlement"
            )
        meter = self._meters.get(namespace, feature.spec.meter_slug)
        if meter.spec.aggregation not in (Aggregation.SUM, Aggregation.COUNT):
            raise InvalidInput(
                f"meter {meter.slug!r} aggregates with {meter.spec.aggregation.value}; metered entitlements"
                " count SUM or COUNT meters",
                code="invalid_entitlement",
            )

    def _customer(self, namespace: str, owner: str) -> Customer:
        """The customer keyed ``owner`` or with that id, else the one whose usage attribution
        claims the subject ``owner`` (OpenMeter's subject paths find a customer so)."""
        try:
            return self._customers.get(namespace, owner)
        except NotFound:
            claimer = self._customers.by_subject(namespace, owner)
            if claimer is None:
                raise
            return claimer

    def of_customer(self, namespace: str, owner: str, *, include_deleted: bool = False) -> list[Entitlement]:
        customer = self._customer(namespace, owner)
        return self._entitlements.list(namespace, customer_id=customer.id, include_deleted=include_deleted)

    def list(self, namespace: str, *, features: Sequence[str] = (), customers: Sequence[str] = ()) -> list[Entitlement]:
        """Live entitlements; each non-empty filter keeps those matching one of its values
        (a feature by key or id, a customer by key)."""
        return [
            e
            for e in self._entitlements.list(namespace)
            if (not features or e.feature_key in features or e.feature_id in features)
            and (not customers or e.customer_key in customers)
        ]

    def get(self, namespace: str, entitlement_id: str) -> Entitlement:
        return self._entitlements.get(namespace, entitlement_id)

    def find(self, namespace: str, owner: str, id_or_feature: str) -> Entitlement:
        """The customer's live entitlement with this id, or to this feature (key or id)."""
        for ent in self.of_customer(namespace, owner):
            if id_or_feature in (ent.id, ent.feature_key, ent.feature_id):
                return ent
        raise NotFound(f"no entitlement {id_or_feature!r} for this customer", code="entitlement_not_found")

    def period_start_us(self, ent: Entitlement, t_us: int) -> int | None:
        """Where the usage period of metered ``ent`` holding ``t_us`` starts (after its last
        reset); None for other types."""
        if ent.spec.type != "metered" or ent.spec.usage_period is None:
            return None
        customer = self._customers.get(ent.namespace, ent.customer_id)
        rec = recurrence(ent.spec.usage_period.interval, from_us(ent.anchor_us), customer.timezone)
        return max(rec.period_at_us(t_us).start_us, ent.last_reset_us)

    def delete(self, namespace: str, owner: str, id_or_feature: str) -> None:
        ent = self.find(namespace, owner, id_or_feature)
        self._entitlements.delete(namespace, ent.id, self._clock.now_us())

    def reset(
        self,
        namespace: str,
        owner: str,
        id_or_feature: str,
        effective_us: int | None,
        retain_anchor: bool,
        state: tuple[Decimal, dict[str, Decimal]] | None = None,
    ) -> None:
        """Start a new usage period at ``effective_us`` (to the minute; default now). ``state``
        is the overage and each grant's balance the credit engine leaves then (none: zero
        overage, every grant at its amount)."""
        ent = self.find(namespace, owner, id_or_feature)
        now = self._clock.now_us()
        overage, balances = (Decimal(0), None) if state is None else state
        updated = reset(ent, effective_us, retain_anchor, now, overage, balances)
        self._entitlements.update(updated)
        self.changed(updated)

    def void_issued(self, ent: Entitlement, at_us: int) -> None:
        """Void the grant ``ent``'s ``issueAfterReset`` stands for at ``at_us`` (checked by the
        caller): from then on it no longer counts."""
        updated = msgspec.structs.replace(ent, issue_voided_us=at_us)
        self._entitlements.update(updated)
        self.changed(updated)
