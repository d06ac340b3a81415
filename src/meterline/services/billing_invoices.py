"""Finalized invoices (list, fetch, void and re-issue) and prepaid credits.

A stored invoice is never changed: a void is recorded beside it and gives back the credits
it burned; a replacement is a new invoice that prices the voided one's windows again.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from meterline.domain.billing.credits import GrantTerms, grant_problems
from meterline.domain.billing.records import CreditBalances, GrantBalance, InvoiceRecord
from meterline.domain.clock import Clock, from_us, to_us
from meterline.domain.errors import InvalidInput
from meterline.ports.billing import BillingStores
from meterline.services.billing_runs import BillingRuns


class BillingInvoices:
    def __init__(self, stores: BillingStores, runs: BillingRuns, clock: Clock) -> None:
        self._stores = stores
        self._runs = runs
        self._clock = clock

    def list(
        self, namespace: str, customer: str | None = None, from_us: int | None = None, to_us: int | None = None
    ) -> list[InvoiceRecord]:
        """Invoices (of ``customer``: a key or id) whose period starts in ``[from_us, to_us)``."""
        customer_id = None if customer is None else self._stores.directory.customer(namespace, customer).id
        return self._stores.invoices.list(
            namespace, customer_id=customer_id, period_from_us=from_us, period_to_us=to_us
        )

    def get(self, namespace: str, number: str) -> InvoiceRecord:
        return self._stores.invoices.get(namespace, number)

    def void(self, namespace: str, number: str, reason: str, *, reissue: bool) -> tuple[InvoiceRecord, str | None]:
        """Void ``number`` (its credits come back) and, with ``reissue``, finalize its replacement:
        (the voided record, the replacement's number)."""
        if not reason.strip():
            raise InvalidInput("a void needs a reason", code="invalid_void")
        self._stores.invoices.void(namespace, number, reason, self._clock.now_us())
        replacement = self._runs.reissue(namespace, number) if reissue else None
        return self._stores.invoices.get(namespace, number), replacement

    def reissue(self, namespace: str, number: str) -> str:
        """A replacement for voided invoice ``number``; its number."""
        return self._runs.reissue(namespace, number)


class BillingCredits:
    def __init__(self, stores: BillingStores, clock: Clock) -> None:
        self._stores = stores
        self._clock = clock

    def grant(self, namespace: str, customer: str, terms: GrantTerms) -> GrantTerms:
        """Give ``customer`` a credit grant (effective now unless it says otherwise)."""
        problems = grant_problems(terms)
        if problems:
            raise InvalidInput(
                "Invalid credit grant: " + "; ".join(problems), code="invalid_credit_grant", problems=problems
            )
        if terms.effective_at is None:
            terms = msgspec.structs.replace(terms, effective_at=from_us(self._clock.now_us()))
        customer_id = self._stores.directory.customer(namespace, customer).id
        self._stores.credits.add(namespace, customer_id, terms, self._clock.now_us())
        return terms

    def balances(self, namespace: str, customer: str) -> CreditBalances:
        """Every live grant with its balance; totals per currency count the unexpired ones."""
        customer_id = self._stores.directory.customer(namespace, customer).id
        now = self._clock.now_us()
        grants: list[GrantBalance] = []
        totals: dict[str, Decimal] = {}
        for terms, balance in self._stores.credits.balances(namespace, customer_id):
            usable = terms.expires_at is None or to_us(terms.expires_at) > now
            grants.append(GrantBalance(terms, balance, not usable))
            if usable:
                totals[terms.currency] = totals.get(terms.currency, Decimal(0)) + balance
        return CreditBalances(dict(sorted(totals.items())), grants)

    def void(self, namespace: str, customer: str, key: str) -> None:
        customer_id = self._stores.directory.customer(namespace, customer).id
        self._stores.credits.void(namespace, customer_id, key, self._clock.now_us())
