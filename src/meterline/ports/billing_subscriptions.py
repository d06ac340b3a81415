"""Where subscriptions are kept, with how far each is invoiced. Overlap and invoiced-period
rules are the billing services'; a store runs them in the transaction of the write they guard."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Protocol

from meterline.domain.billing import Subscription
from meterline.domain.billing.records import StoredSubscription

Change = Callable[[StoredSubscription], tuple[Subscription, StoredSubscription | None]]
"""From the stored subscription: its new terms and, optionally, a successor to start."""


class SubscriptionStore(Protocol):
    def add(
        self, new: StoredSubscription, check: Callable[[builtins.list[StoredSubscription]], None]
    ) -> StoredSubscription:
        """Store ``new`` once ``check`` passed on the customer's other subscriptions, read in the
        same transaction (whatever ``check`` raises aborts the write)."""
        ...

    def update(self, namespace: str, id_: str, change: Change) -> tuple[StoredSubscription, StoredSubscription | None]:
        """Apply ``change`` to subscription ``id_`` atomically: store its new terms and start the
        successor it returns. ``NotFound`` ``subscription_not_found`` when there is no ``id_``."""
        ...

    def get(self, namespace: str, id_: str) -> StoredSubscription:
        """``NotFound`` ``subscription_not_found`` when there is no ``id_``."""
        ...

    def list(self, namespace: str, customer_id: str | None = None) -> builtins.list[StoredSubscription]:
        """Ordered by customer, start and id."""
        ...

    def open(self, namespace: str | None, starting_before_us: int | None = None) -> builtins.list[StoredSubscription]:
        """The subscriptions with a window left to invoice (of ``namespace``, or of every one),
        optionally only those starting before ``starting_before_us``; ordered by namespace,
        customer, start and id."""
        ...

    def billed_through(self, namespace: str | None) -> dict[str, int]:
        """How far each subscription (of ``namespace``, or of every one) is invoiced, by id."""
        ...
