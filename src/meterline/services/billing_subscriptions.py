"""Subscriptions: a customer on a published plan version from a minute-aligned start. A
customer's subscriptions never overlap; a change or cancellation never reaches into an
invoiced period. Both rules run in the transaction of the write they guard."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ulid import ULID

from meterline.domain.billing import Subscription, cancel, change_plan
from meterline.domain.billing.records import StoredSubscription
from meterline.domain.billing.subscriptions import MINUTE_US, aligned, check_subscription, overlapping
from meterline.domain.clock import Clock, from_us, to_us
from meterline.domain.errors import Conflict
from meterline.ports.billing import BillingStores
from meterline.services.billing_plans import BillingPlans


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """A new subscription as asked: unset ``version``: the latest published; unset ``start``:
    this minute; unset ``zone``: the customer's."""

    customer: str
    plan: str
    version: int | None = None
    start: datetime | None = None
    anchor_day: int = 1
    zone: str | None = None


class BillingSubscriptions:
    def __init__(self, stores: BillingStores, plans: BillingPlans, clock: Clock) -> None:
        self._stores = stores
        self._plans = plans
        self._clock = clock

    def subscribe(self, namespace: str, req: SubscriptionRequest) -> StoredSubscription:
        """Start ``req``'s customer on a published plan version."""
        customer = self._stores.directory.customer(namespace, req.customer)
        version = req.version or self._plans.get(namespace, req.plan).version
        start = req.start or self._now_minute()
        sub = Subscription(customer.key, req.plan, version, start, req.zone or customer.timezone, req.anchor_day)
        self._check_published(namespace, sub.plan, sub.version)
        sub = check_subscription(sub)
        aligned("start", sub.start)
        new = StoredSubscription(str(ULID()), namespace, customer.id, sub, to_us(sub.start), None, self._clock.now_us())
        return self._stores.subscriptions.add(new, lambda others: _no_overlap(new, others))

    def change(
        self, namespace: str, id_: str, plan: str, version: int | None, at: datetime | None
    ) -> tuple[StoredSubscription, StoredSubscription]:
        """End subscription ``id_`` at ``at`` and start ``plan`` ``version`` there: (closed, started)."""
        version = version or self._plans.get(namespace, plan).version
        at = at or self._now_minute()
        aligned("at", at)
        self._check_published(namespace, plan, version)
        now = self._clock.now_us()

        def change(old: StoredSubscription) -> tuple[Subscription, StoredSubscription]:
            closed, started = change_plan(old.subscription, at, plan, version)
            _not_invoiced(old, at)
            return closed, StoredSubscription(str(ULID()), namespace, old.customer_id, started, to_us(at), old.id, now)

        closed, started = self._stores.subscriptions.update(namespace, id_, change)
        assert started is not None
        return closed, started

    def cancel(self, namespace: str, id_: str, at: datetime | None) -> StoredSubscription:
        """End billing of ``id_`` at ``at`` (not inside an already invoiced period)."""
        at = at or self._now_minute()
        aligned("at", at)

        def end(old: StoredSubscription) -> tuple[Subscription, None]:
            ended = cancel(old.subscription, at)
            _not_invoiced(old, at)
            return ended, None

        return self._stores.subscriptions.update(namespace, id_, end)[0]

    def list(self, namespace: str, customer: str | None = None) -> list[StoredSubscription]:
        """Every subscription (of ``customer``: a key or id)."""
        customer_id = None if customer is None else self._stores.directory.customer(namespace, customer).id
        return self._stores.subscriptions.list(namespace, customer_id)

    def get(self, namespace: str, id_: str) -> StoredSubscription:
        return self._stores.subscriptions.get(namespace, id_)

    def _check_published(self, namespace: str, plan: str, version: int) -> None:
        if not self._plans.get(namespace, plan, version).published:
            raise Conflict(
                f"plan {plan!r} version {version} is a draft; publish it before subscribing", code="plan_not_published"
            )

    def _now_minute(self) -> datetime:
        now = self._clock.now_us()
        return from_us(now - now % MINUTE_US)


def _no_overlap(new: StoredSubscription, others: list[StoredSubscription]) -> None:
    i = overlapping(new.subscription, [o.subscription for o in others])
    if i is not None:
        raise Conflict(
            f"customer {new.subscription.customer!r} already has subscription {others[i].id!r} in that time;"
            " change its plan or cancel it first",
            code="subscription_overlaps",
        )


def _not_invoiced(old: StoredSubscription, at: datetime) -> None:
    if to_us(at) < old.billed_through_us:
        raise Conflict(
            f"subscription {old.id!r} is invoiced up to {from_us(old.billed_through_us).isoformat()};"
            " a change or cancellation must come after that",
            code="period_invoiced",
        )
