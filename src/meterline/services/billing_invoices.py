"""Finalized invoices (list, fetch, void and re-issue) and prepaid credits.

A stored invoice is never changed: a void is recorded beside it and gives back the credits
it burned; a replacement is a new invoice that prices the voided one's windows again.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from meterline.domain.billing import UsageKey
from meterline.domain.billing.credits import GrantTerms, grant_problems
from meterline.domain.billing.documents import usage_map
from meterline.domain.billing.records import Billed, CreditBalances, GrantBalance, InvoiceRecord
from meterline.domain.clock import Clock, from_us, to_us
from meterline.domain.errors import InvalidInput
from meterline.ports.billing import BillingStores
from meterline.services.billing_pricer import Pricer
from meterline.services.billing_runs import BillingRuns


@dataclass(frozen=True, slots=True)
class BilledCheck:
    """One finalized window as billed (its latest live snapshot: the first invoice plus the
    adjustments since) beside the usage read now, per meter, and the money the adjustment it
    would get now carries per meter (empty when nothing changed)."""

    billed: Billed
    customer: str
    """The customer's key."""
    subjects: tuple[str, ...]
    currency: str
    invoiced: dict[str, Decimal]
    current: dict[str, Decimal]
    amounts: dict[str, Decimal]


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

    def billed_windows(self, namespace: str, start_us: int, end_us: int) -> builtins.list[BilledCheck]:
        """Every live billed window starting in ``[start_us, end_us)``, its quantities as billed
        and as metered now (the usage the next invoice's adjustment would be priced from)."""
        pricer = Pricer(self._stores, namespace)
        billed = self._stores.invoices.billed(namespace, list(pricer.customers), start_us)
        rows = [b for found in billed.values() for b in found if start_us <= _us(b) < end_us]
        changed = {now.id: (adj, now, currency) for adj, now, currency in pricer.adjustments(rows)}
        out = []
        for b in sorted(rows, key=lambda r: (_us(r), r.customer_id)):
            customer = pricer.customers.get(b.customer_id)
            if customer is None:
                continue
            invoiced = _per_meter(usage_map(b.window.usage))
            adjusted = changed.get(b.id)
            if adjusted is None:
                currency = pricer.plan(b.window.plan, b.window.version).currency
                out.append(BilledCheck(b, customer.key, customer.usage_subjects, currency, invoiced, invoiced, {}))
                continue
            adj, now, currency = adjusted
            amounts: dict[str, Decimal] = {}
            for line in adj.lines:
                if line.meter is not None:
                    amounts[line.meter] = amounts.get(line.meter, Decimal(0)) + line.amount
            current = _per_meter(usage_map(now.current.usage))
            out.append(BilledCheck(b, customer.key, customer.usage_subjects, currency, invoiced, current, amounts))
        return out


def _us(b: Billed) -> int:
    return b.window_start_us


def _per_meter(usage: Mapping[UsageKey, Decimal]) -> dict[str, Decimal]:
    """Each meter's quantity of a window: its total, or the sum of its groups when only those
    were read."""
    totals: dict[str, Decimal] = {}
    groups: dict[str, Decimal] = {}
    for (meter, group), quantity in usage.items():
        if group is None:
            totals[meter] = quantity
        else:
            groups[meter] = groups.get(meter, Decimal(0)) + quantity
    return {**groups, **totals}


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
