"""Billing runs: close every due period and finalize its invoice; re-issue voided invoices.

A window is due when it has ended by ``now - grace`` (the injected clock): the end of its
billing period, or earlier when the subscription ended (a plan change or cancellation). For
every due window, in order per subscription:

1. read its usage (batched, ``billing_usage``) and price it with the subscription's plan
   version; usage without a price fails the window (it is reported, never billed at 0);
2. price late usage: for each of the customer's invoiced windows (within the look-back) whose
   usage changed since it was billed, ``billing.adjust`` makes adjustment lines that reference
   the original invoice; they go on the customer's first invoice of this run in that currency
   (never on a replacement: ``reissue`` prices the voided invoice's own windows and nothing else);
3. finalize (``SqliteInvoices.finalize``): number, credits, immutable bytes, one transaction.

Running again changes nothing: finalized windows are behind ``billed_through_us`` and the
unique (subscription, period, replaces) key rejects a second invoice for the same period.
A report lists the invoice of every window that was due when the run was asked, whichever run
finalized it, so a run that waited for the scheduler's does not answer "nothing".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec

from meterline.adapters.sqlite.billing import SqliteBilling
from meterline.adapters.sqlite.billing_invoices import live_grants
from meterline.adapters.sqlite.billing_model import Billed, Pending, Settings, StoredSubscription, load_subscription
from meterline.adapters.sqlite.billing_pricer import Ask, Failed, Pricer
from meterline.domain.billing import Adjustment, BillingWindow, PlanVersion, billing_windows
from meterline.domain.billing.documents import Invoice, Parties, assemble, decode_invoice, invoice_window
from meterline.domain.clock import from_us, to_us
from meterline.domain.errors import Conflict, MeterlineError

log = logging.getLogger("meterline.billing")
_SUB = "id, namespace, customer, body, billed_through_us, previous, created_us"


@dataclass(frozen=True, slots=True)
class RunFailure:
    subscription: str
    customer: str
    period_start_us: int
    code: str
    detail: str


@dataclass
class RunReport:
    at_us: int
    cutoff_us: int
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    stale: int = 0
    failed: list[RunFailure] = field(default_factory=list)


Due = tuple[StoredSubscription, PlanVersion, BillingWindow]


@dataclass(frozen=True, slots=True)
class Through:
    """Where a subscription's invoicing stands (a row of ``subscriptions``)."""

    namespace: str
    customer_id: str
    billed_through_us: int


@dataclass(frozen=True, slots=True)
class Job:
    """A window to invoice for ``subscription``; ``advances``: a run (moves billed_through) or a
    replacement (does not)."""

    subscription: str
    ask: Ask
    advances: bool


class BillingRuns:
    """Runs are serialised in this process; across processes the finalize checks keep them safe."""

    def __init__(self, billing: SqliteBilling) -> None:
        self._billing = billing
        self._lock = billing.run_lock

    def run(self, settings: Settings, namespace: str | None = None) -> RunReport:
        """Finalize every due window of ``namespace`` (every namespace when None).

        The report answers for every window that was due when the run was asked: finalized by
        this run (``created``) or by another one first (``existing``), e.g. the scheduler's run
        that held the lock while this one waited for it. The cutoff is read once the lock is held.
        """
        asked = self._billed_through(namespace, unbilled=True)
        with self._lock:
            now = self._billing.now_us()
            report = RunReport(now, now - settings.grace_us)
            report.existing += self._finalized_meanwhile(asked, self._billed_through(namespace), report.cutoff_us)
            for ns in [namespace] if namespace is not None else self._namespaces():
                self._run(ns, settings, report)
        return report

    def reissue(self, settings: Settings, namespace: str, number: str) -> str:
        """A replacement for voided invoice ``number``: its windows priced with today's usage."""
        record = self._billing.invoices.get(namespace, number)
        if record.voided_us is None:
            raise Conflict(f"invoice {number!r} is not void; void it first", code="invoice_not_voided")
        pricer = Pricer(self._billing, namespace)
        jobs = [
            Job(
                record.subscription,
                Ask(record.customer_id, pricer.plan(w.plan, w.version), BillingWindow(w.period, w.window)),
                False,
            )
            for w in decode_invoice(record.body).windows
        ]
        pending, failures = self._pending(pricer, jobs, settings, replaces=number)
        if failures:
            raise Conflict(f"invoice {number!r} cannot be re-issued: {failures[0].detail}", code=failures[0].code)
        with self._lock:
            outcome = self._billing.invoices.finalize(pending, settings)[0]
        if outcome.number is None:
            raise Conflict("billed usage changed while re-issuing; try again", code="billing_busy")
        return outcome.number

    def _billed_through(self, namespace: str | None, *, unbilled: bool = False) -> dict[str, Through]:
        """Per subscription (of ``namespace``, or all): how far it is invoiced; ``unbilled``: only
        the subscriptions with a window left to invoice."""
        rows = self._billing.db.reader().execute(
            "SELECT id, namespace, customer, billed_through_us FROM subscriptions WHERE (? IS NULL OR namespace = ?)"
            + (" AND billed_through_us < coalesce(end_us, 1 << 62)" if unbilled else ""),
            (namespace, namespace),
        )
        return {sub: Through(ns, customer, through) for sub, ns, customer, through in rows}

    def _finalized_meanwhile(self, asked: dict[str, Through], now: dict[str, Through], cutoff_us: int) -> list[str]:
        """The live invoices of the windows that were due when the run was asked and that another
        run finalized before this one held the lock (the windows in ``(asked, now]``)."""
        numbers: list[str] = []
        reader = self._billing.db.reader()
        for sub, before in asked.items():
            after = now.get(sub, before).billed_through_us
            if after <= before.billed_through_us:
                continue
            rows = reader.execute(
                "SELECT i.number FROM billed_windows b JOIN invoices i ON i.id = b.invoice"
                " WHERE b.namespace = ? AND b.customer = ? AND b.subscription = ? AND b.invoice = b.origin"
                " AND b.window_end_us > ? AND b.window_end_us <= ?"
                " AND b.invoice NOT IN (SELECT invoice FROM invoice_voids) ORDER BY b.invoice",
                (before.namespace, before.customer_id, sub, before.billed_through_us, min(after, cutoff_us)),
            )
            numbers += [number for (number,) in rows]
        return numbers

    def _namespaces(self) -> list[str]:
        rows = self._billing.db.reader().execute("SELECT DISTINCT namespace FROM subscriptions ORDER BY namespace")
        return [ns for (ns,) in rows]

    def _run(self, namespace: str, settings: Settings, report: RunReport) -> None:
        pricer = Pricer(self._billing, namespace)
        due = list(self._due(pricer, namespace, report))
        jobs = [Job(sub.id, Ask(sub.customer_id, plan, w), True) for sub, plan, w in due]
        pending, failures = self._pending(pricer, jobs, settings)
        report.failed += failures
        for start in range(0, len(pending), settings.chunk):
            for outcome in self._billing.invoices.finalize(pending[start : start + settings.chunk], settings):
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

    def _due(self, pricer: Pricer, namespace: str, report: RunReport) -> Iterator[Due]:
        rows = self._billing.db.reader().execute(
            f"SELECT {_SUB} FROM subscriptions WHERE namespace = ? AND billed_through_us < coalesce(end_us, 1 << 62)"
            " AND start_us < ? ORDER BY customer, start_us, id",
            (namespace, report.cutoff_us),
        )
        windows: dict[tuple[object, ...], list[BillingWindow]] = {}  # subscriptions alike share windows
        for sub in map(load_subscription, rows.fetchall()):
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
        self, pricer: Pricer, jobs: list[Job], settings: Settings, replaces: str | None = None
    ) -> tuple[list[Pending], list[RunFailure]]:
        priced = pricer.price([job.ask for job in jobs])
        pending: list[Pending] = []
        failures: list[RunFailure] = []
        blocked: set[str] = set()  # a failed window holds back the later windows of its subscription
        issued = from_us(self._billing.now_us())
        for job, result in zip(jobs, priced, strict=True):
            ask = job.ask
            if job.subscription in blocked:
                continue
            if isinstance(result, Failed):
                blocked.add(job.subscription)
                customer = pricer.customers.get(ask.customer_id)
                who = customer.key if customer else ask.customer_id
                failures.append(
                    RunFailure(job.subscription, who, ask.window.window.start_us, result.code, result.detail)
                )
                continue
            customer = pricer.customer(ask.customer_id)
            parties = Parties(customer.key, customer.name, job.subscription, ask.window.period, replaces)
            window = invoice_window(result.draft, ask.window.period, result.usage)
            through = ask.window.window.end_us if job.advances else None
            pending.append(
                Pending(pricer.namespace, ask.customer_id, parties, ((result.draft, window),), (), issued, through)
            )
        if replaces is not None:  # a replacement covers exactly its own windows: late usage of
            return pending, failures  # others waits for the next regular invoice
        return self._with_adjustments(pricer, pending, settings), failures

    def _with_adjustments(self, pricer: Pricer, pending: list[Pending], settings: Settings) -> list[Pending]:
        customers = {p.customer_id for p in pending}
        if not customers:
            return pending
        since = self._billing.now_us() - settings.grace_us - settings.lookback_us
        billed = self._billing.invoices.billed(pricer.namespace, customers, since)
        found = pricer.adjustments([b for rows in billed.values() for b in rows])
        by_customer: dict[tuple[str, str], list[tuple[Adjustment, Billed]]] = {}
        for adj, b, currency in found:
            by_customer.setdefault((b.customer_id, currency), []).append((adj, b))
        out = []
        for p in pending:
            carried = by_customer.pop((p.customer_id, p.windows[0][0].currency), [])
            out.append(
                Pending(
                    p.namespace, p.customer_id, p.parties, p.windows, tuple(carried), p.issued_at, p.billed_through_us
                )
            )
        return out

    def preview(self, settings: Settings, namespace: str, customer_key: str) -> tuple[list[Invoice], list[RunFailure]]:
        """What the customer's not yet invoiced windows up to now come to (nothing is stored).

        Usage is what is known now; credits burn from today's balances; adjustments for late
        usage of invoiced windows are included, as the next invoice would carry them."""
        customer = self._billing.customers.get(namespace, customer_key)
        pricer = Pricer(self._billing, namespace)
        now = self._billing.now_us()
        jobs = []
        for sub in self._billing.subscriptions(namespace, customer.id):
            s = sub.subscription
            if s.end is not None and sub.billed_through_us >= to_us(s.end):
                continue
            plan = pricer.plan(s.plan, s.version)
            for w in billing_windows(s, plan.cadence, until=from_us(now + 1), since=from_us(sub.billed_through_us)):
                jobs.append(Job(sub.id, Ask(customer.id, plan, w), True))
        pending, failures = self._pending(pricer, jobs, settings)
        grants = live_grants(self._billing.db.reader(), namespace, customer.id)
        previews = []
        for p in pending:
            adjustments = [a for a, _ in p.adjustments]
            invoice, burned = assemble("", p.parties, p.windows, adjustments, grants, p.issued_at)
            grants = [msgspec.structs.replace(g, balance=burned.balances.get(g.key, g.balance)) for g in grants]
            previews.append(invoice)
        return previews, failures
