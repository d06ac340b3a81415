"""Where prepaid credit grants are kept, with what invoices burned of them."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from meterline.domain.billing.credits import GrantTerms


class CreditStore(Protocol):
    def add(self, namespace: str, customer_id: str, grant: GrantTerms, at_us: int) -> None:
        """``Conflict`` ``credit_grant_exists`` when the customer has a grant with that key."""
        ...

    def void(self, namespace: str, customer_id: str, key: str, at_us: int) -> None:
        """``NotFound`` ``credit_grant_not_found`` when there is no live grant ``key``."""
        ...

    def balances(self, namespace: str, customer_id: str) -> list[tuple[GrantTerms, Decimal]]:
        """Every live grant of the customer with its balance (amount less burns), by key."""
        ...
