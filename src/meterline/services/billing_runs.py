"""Billing runs: close every due period and finalize its invoice; re-issue voided invoices;
preview what a customer's next invoices come to.

A window is due when it has ended by ``now - grace`` (the injected clock): the end of its
billing period, or earlier when the subscription ended (a plan change or cancellation). For
every due window, in order per subscription:

1. read its usage (batched, through ``PeriodUsage``) and price it with the subscription's plan
   version; usage without a price fails the window (it is reported, never billed at 0);
2. price late usage: for each of the customer's invoiced windows (within the look-back) whose
   usage changed since it was billed, ``billing.adjust`` makes adjustment lines that reference
   the original invoice; they go on the customer's first invoice of this run in that currency
   (never on a replacement: ``reissue`` prices the voided invoice's own windows and nothing else);
3. finalize (``billing_finalize``): number, credits, immutable bytes, one transaction.

Running again changes nothing: finalized windows are behind ``billed_through`` and a second
invoice for the same (subscription, period, replaces) key is never made. A report lists the
invoice of every window that was due when the run was asked, whichever run finalized it, so a
run that waited for the scheduler's does not answer "nothing".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager

import msgspec

from meterline.domain.billing import BillingWindow, PlanVersion, billing_windows
from meterline.domain.billing.documents import Invoice, assemble, decode_invoice
from meterline.domain.billing.records import Pending, RunFailure, RunReport, RunSettings, StoredSubscription
from meterline.domain.clock import Clock, from_us, to_us
from meterline.domain.errors import Conflict, MeterlineError
from meterline.ports.billing import BillingStores
from meterline.services.billing_finalize import finalize, grants_of
from meterline.services.billing_pending import Job, pending
from meterline.services.billing_pricer import Ask, Pricer

log = logging.getLogger("meterline.billing")
Due = tuple[StoredSubscription, PlanVersion, BillingWindow]


class BillingRuns:
    """Runs are serialised in this process (``lock``); across processes the finalize checks
    keep them safe."""

    def __init__(self, stores: BillingStores, clock: Clock, settings: RunSettings) -> None:
        self._stores = stores
        self._clock = clock
        self.settings = settings
        self.lock: AbstractContextManager[object] = threading.Lock()
        """Held by a billing run or re-issue: one at a time in this process."""

    def run(self, namespace: str | None = None) -> RunReport:
        """Finalize every due window of ``namespace`` (every namespace when None).

        The report answers for every window that was due when the run was asked: finalized by
        this run (``created``) or by another one first (``existing``), e.g. the scheduler's run
        that held the lock while this one waited for it. The cutoff is read once the lock is held.
        """
        asked = self._stores.subscriptions.open(namespace)
        with self.lock:
            now = self._clock.now_us()
            report = RunReport(now, now - self.settings.grace_us)
            through = self._stores.subscriptions.billed_through(namespace)
            report.existing += self._finalized_meanwhile(asked, through, report.cutoff_us)
            for ns in [namespace] if namespace is not None else sorted({s.namespace for s in asked}):
                self._run(ns, report)
        return report

    def reissue(self, namespace: str, number: str) -> str:
        """A replacement for voided invoice ``number``: its windows priced with today's usage."""
        record = self._stores.invoices.get(namespace, number)
        if record.voided_us is None:
            raise Conflict(f"invoice {number!r} is not void; void it first", code="invoice_not_voided")
        pricer = Pricer(self._stores, namespace)
        windows = decode_invoice(record.body).windows
        asks = [
            Ask(record.customer_id, pricer.plan(w.plan, w.version), BillingWindow(w.period, w.window)) for w in windows
        ]
        jobs = [Job(record.subscription, ask, False) for ask in asks]
        found, failures = self._pending(pricer, jobs, replaces=number)
        if failures:
            raise Conflict(f"invoice {number!r} cannot be re-issued: {failures[0].detail}", code=failures[0].code)
        with self.lock:
            outcome = finalize(self._stores.finalizing, found, self.settings)[0]
        if outcome.number is None:
            raise Conflict("billed usage changed while re-issuing; try again", code="billing_busy")
        return outcome.number

    def preview(self, namespace: str, customer_key: str) -> tuple[list[Invoice], list[RunFailure]]:
        """What the customer's not yet invoiced windows up to now come to (nothing is stored).

        Usage is what is known now; credits burn from today's balances; adjustments for late
        usage of invoiced windows are included, as the next invoice would carry them."""
        customer = self._stores.directory.customer(namespace, customer_key)
        pricer = Pricer(self._stores, namespace)
        now = self._clock.now_us()
        jobs = []
        for sub in self._stores.subscriptions.list(namespace, customer.id):
            if not sub.open:
                continue
            s = sub.subscription
            plan = pricer.plan(s.plan, s.version)
            for w in billing_windows(s, plan.cadence, until=from_us(now + 1), since=from_us(sub.billed_through_us)):
                jobs.append(Job(sub.id, Ask(customer.id, plan, w), True))
        found, failures = self._pending(pricer, jobs)
        grants = grants_of(self._stores.credits.balances(namespace, customer.id))
        previews = []
        for p in found:
            adjustments = [a for a, _ in p.adjustments]
            invoice, burned = assemble("", p.parties, p.windows, adjustments, grants, p.issued_at)
            grants = [msgspec.structs.replace(g, balance=burned.balances.get(g.key, g.balance)) for g in grants]
            previews.append(invoice)
        return previews, failures

    def _finalized_meanwhile(self, asked: list[StoredSubscription], now: dict[str, int], cutoff_us: int) -> list[str]:
        """The live invoices of the windows that were due when the run was asked and that another
        run finalized before this one held the lock (the windows in ``(asked, now]``)."""
        numbers: list[str] = []
        for sub in asked:
            after = now.get(sub.id, sub.billed_through_us)
            if after > sub.billed_through_us:
                numbers += self._stores.invoices.first_billed(
                    sub.namespace, sub.customer_id, sub.id, sub.billed_through_us, min(after, cutoff_us)
                )
        return numbers

    def _run(self, namespace: str, report: RunReport) -> None:
        pricer = Pricer(self._stores, namespace)
        jobs = [Job(sub.id, Ask(sub.customer_id, plan, w), True) for sub, plan, w in self._due(pricer, report)]
        found, failures = self._pending(pricer, jobs)
        report.failed += failures
        chunk = self.settings.chunk
        for start in range(0, len(found), chunk):
            for outcome in finalize(self._stores.finalizing, found[start : start + chunk], self.settings):
                if outcome.status == "created":
                    report.created.append(str(outcome.number))
                elif outcome.status == "exists":
                    report.existing.append(str(outcome.number))
                else:
                    report.stale += 1
        for failure in failures:
            log.warning(
                "billing window not finalized", extra={"subscription": failure.subscription, "code": failure.code}
            )

    def _due(
        self, pricer: Pricer, report: RunReport
    ) -> Iterator[tuple[StoredSubscription, PlanVersion, BillingWindow]]:
        windows: dict[tuple[object, ...], list[BillingWindow]] = {}  # subscriptions alike share windows
        for sub in self._stores.subscriptions.open(pricer.namespace, report.cutoff_us):
            s = sub.subscription
            try:
                plan = pricer.plan(s.plan, s.version)
            except MeterlineError as exc:
                report.failed.append(RunFailure(sub.id, s.customer, sub.billed_through_us, exc.code, exc.detail))
                continue
            key = (plan.cadence, s.zone, s.anchor_day, to_us(s.start), s.end and to_us(s.end), sub.billed_through_us)
            if key not in windows:
                since = from_us(sub.billed_through_us)
                found = billing_windows(s, plan.cadence, until=from_us(report.cutoff_us), since=since)
                windows[key] = [w for w in found if w.window.end_us <= report.cutoff_us]
            for w in windows[key]:
                yield sub, plan, w

    def _pending(
        self, pricer: Pricer, jobs: list[Job], replaces: str | None = None
    ) -> tuple[list[Pending], list[RunFailure]]:
        now = self._clock.now_us()
        since = now - self.settings.grace_us - self.settings.lookback_us
        return pending(self._stores, pricer, jobs, from_us(now), since, replaces)
