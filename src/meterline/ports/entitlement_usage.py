"""Usage of metered entitlements as the live counters know it (current values, checks) and as
the rollups know it (values at a past time, usage per window)."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from meterline.domain.entitlements.credit import Segment
from meterline.domain.entitlements.model import Entitlement
from meterline.domain.entitlements.value import Value
from meterline.domain.meters.query import MeterQuery
from meterline.domain.periods import Period


class EntitlementUsage(Protocol):
    def customer_key(self, namespace: str, key_or_subject: str) -> str | None:
        """The key of the customer with this key or subject, None when there is none."""
        ...

    def value(
        self, namespace: str, customer_key: str, feature_key: str, *, project: bool = True
    ) -> tuple[Entitlement | None, Value | None]:
        """The customer's live entitlement to the feature and its value now, (None, None)
        without one; ``project`` adds the end-of-period projection."""
        ...

    def period_at(self, ent: Entitlement, t_us: int) -> Period | None:
        """The usage period of a live metered entitlement holding ``t_us``; None for any other."""
        ...

    def value_at(self, ent: Entitlement, t_us: int) -> Value | None:
        """The value as of ``t_us`` (usage from its period's start through the minute holding
        it); None unless the entitlement is live and metered."""
        ...

    def state_at_reset(self, ent: Entitlement, at_us: int, preserve: bool) -> tuple[Decimal, dict[str, Decimal]]:
        """The overage left and each grant's balance at the start of the period a reset at
        ``at_us`` opens (``preserve``: the reset keeps the overage)."""
        ...

    def segments(self, ent: Entitlement, start_us: int, end_us: int) -> list[Segment] | None:
        """The credit engine's burndown from ``start_us`` to ``end_us``; None unless the
        entitlement is live and metered."""
        ...

    def windows(self, ent: Entitlement, query: MeterQuery) -> list[tuple[int, int, Decimal]] | None:
        """The entitlement's usage per window of ``query`` (its own subjects and filters);
        None unless it is live and metered."""
        ...
