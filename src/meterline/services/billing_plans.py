"""Price plans: drafts, publishing, copies. A published version never changes; its meters
must exist with the group-by dimensions its cards price."""

from __future__ import annotations

import msgspec

from meterline.domain.billing import PlanStatus, PlanVersion, check_plan, next_version, publish, revise
from meterline.domain.clock import Clock, from_us
from meterline.domain.errors import InvalidPlan, NotFound
from meterline.ports.billing import BillingStores

_REVISABLE = ("currency", "cards", "cadence", "minimum_commitment", "name")


class BillingPlans:
    def __init__(self, stores: BillingStores, clock: Clock) -> None:
        self._stores = stores
        self._clock = clock

    def create(self, namespace: str, plan: PlanVersion, *, auto_version: bool) -> PlanVersion:
        """Store a new draft; ``auto_version`` numbers it after the plan's latest version."""
        draft = check_plan(msgspec.structs.replace(plan, status=PlanStatus.DRAFT, published_at=None))
        if not auto_version:
            return self._stores.plans.add(namespace, draft.plan, lambda _: draft)
        return self._stores.plans.add(
            namespace, draft.plan, lambda latest: msgspec.structs.replace(draft, version=latest + 1)
        )

    def replace(self, namespace: str, plan: PlanVersion) -> PlanVersion:
        """Replace a draft's content; a published version raises ``PlanVersionPublished``."""
        check_plan(plan)
        changes = {f: getattr(plan, f) for f in _REVISABLE}
        return self._stores.plans.update(
            namespace, plan.plan, plan.version, lambda current: check_plan(revise(current, **changes))
        )

    def publish(self, namespace: str, plan: str, version: int) -> PlanVersion:
        """Freeze a draft. Its meters must exist, with the group-by dimensions its cards price."""
        self._check_meters(namespace, self._stores.plans.get(namespace, plan, version))
        at = from_us(self._clock.now_us())
        return self._stores.plans.update(namespace, plan, version, lambda current: publish(current, at))

    def copy(self, namespace: str, plan: str, version: int) -> PlanVersion:
        """A new draft version (the plan's next number) copying ``version``."""
        source = self._stores.plans.get(namespace, plan, version)
        return self._stores.plans.add(namespace, plan, lambda latest: next_version(source, latest + 1))

    def versions(self, namespace: str, plan: str | None = None) -> list[PlanVersion]:
        return self._stores.plans.versions(namespace, plan)

    def history(self, namespace: str, plan: str) -> list[PlanVersion]:
        """Every version of ``plan``; ``NotFound`` ``plan_not_found`` when it has none."""
        found = self._stores.plans.versions(namespace, plan)
        if not found:
            self._stores.plans.get(namespace, plan, 1)  # raises plan_not_found
        return found

    def get(self, namespace: str, plan: str, version: int | None = None) -> PlanVersion:
        """One version; ``None`` means the latest published one."""
        if version is not None:
            return self._stores.plans.get(namespace, plan, version)
        published = [p for p in self._stores.plans.versions(namespace, plan) if p.published]
        if not published:
            raise NotFound(f"plan {plan!r} has no published version", code="plan_not_found")
        return published[-1]

    def _check_meters(self, namespace: str, plan: PlanVersion) -> None:
        found = self._stores.directory.meters(namespace)
        meters = {m.id: m for m in found} | {m.slug: m for m in found}  # a card may name a meter by id
        problems: list[str] = []
        for i, card in enumerate(plan.cards):
            if card.meter is None:
                continue
            meter = meters.get(card.meter)
            if meter is None:
                problems.append(f"cards[{i}].meter {card.meter!r} is not a meter of this namespace")
            elif card.group_by is not None and card.group_by not in meter.spec.group_by:
                problems.append(f"cards[{i}].groupBy {card.group_by!r} is not a groupBy of meter {card.meter!r}")
        if problems:
            raise InvalidPlan("Invalid price plan: " + "; ".join(problems), problems=problems)
