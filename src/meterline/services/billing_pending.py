"""From priced windows to invoices ready to finalize, with the adjustments they carry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from meterline.domain.billing import Adjustment
from meterline.domain.billing.documents import Parties, invoice_window
from meterline.domain.billing.records import Billed, Pending, RunFailure
from meterline.ports.billing import BillingStores
from meterline.services.billing_pricer import Ask, Failed, Pricer


@dataclass(frozen=True, slots=True)
class Job:
    """A window to invoice for ``subscription``; ``advances``: a run (moves billed_through) or a
    replacement (does not)."""

    subscription: str
    ask: Ask
    advances: bool


def pending(
    stores: BillingStores,
    pricer: Pricer,
    jobs: list[Job],
    issued: datetime,
    since_us: int,
    replaces: str | None = None,
) -> tuple[list[Pending], list[RunFailure]]:
    """Price ``jobs`` into one pending invoice per window. A failed window holds back the later
    windows of its subscription. Unless this is a replacement, each customer's first invoice in
    a currency carries the adjustments of its billed windows ending after ``since_us``."""
    priced = pricer.price([job.ask for job in jobs])
    found: list[Pending] = []
    failures: list[RunFailure] = []
    blocked: set[str] = set()
    for job, result in zip(jobs, priced, strict=True):
        ask = job.ask
        if job.subscription in blocked:
            continue
        if isinstance(result, Failed):
            blocked.add(job.subscription)
            customer = pricer.customers.get(ask.customer_id)
            who = customer.key if customer else ask.customer_id
            failures.append(RunFailure(job.subscription, who, ask.window.window.start_us, result.code, result.detail))
            continue
        customer = pricer.customer(ask.customer_id)
        parties = Parties(customer.key, customer.name, job.subscription, ask.window.period, replaces)
        window = invoice_window(result.draft, ask.window.period, result.usage)
        through = ask.window.window.end_us if job.advances else None
        found.append(
            Pending(pricer.namespace, ask.customer_id, parties, ((result.draft, window),), (), issued, through)
        )
    if replaces is not None:  # a replacement covers exactly its own windows: late usage of
        return found, failures  # others waits for the next regular invoice
    return _with_adjustments(stores, pricer, found, since_us), failures


def _with_adjustments(stores: BillingStores, pricer: Pricer, found: list[Pending], since_us: int) -> list[Pending]:
    customers = {p.customer_id for p in found}
    if not customers:
        return found
    billed = stores.invoices.billed(pricer.namespace, customers, since_us)
    adjusted = pricer.adjustments([b for rows in billed.values() for b in rows])
    by_customer: dict[tuple[str, str], list[tuple[Adjustment, Billed]]] = {}
    for adj, b, currency in adjusted:
        by_customer.setdefault((b.customer_id, currency), []).append((adj, b))
    out = []
    for p in found:
        carried = by_customer.pop((p.customer_id, p.windows[0][0].currency), [])
        out.append(
            Pending(p.namespace, p.customer_id, p.parties, p.windows, tuple(carried), p.issued_at, p.billed_through_us)
        )
    return out
