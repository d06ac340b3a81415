"""One customer's report: its usage per meter and group over a range, its entitlements with
balances, the alerts fired for it, its invoices and credits.

Two audiences read it: support (the dashboard's customer drill-down, everything) and the
customer itself (the portal page: only the meters its token allows, entitlements of those
meters, its invoices; no alerts, no other customer). A customer is found by key or id; a
subject that no customer claims is reported as a customer of its own (usage only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec

from meterline.domain.billing.records import CreditBalances, InvoiceRecord
from meterline.domain.customers.model import Customer
from meterline.domain.entitlements.model import Entitlement
from meterline.domain.entitlements.value import Value
from meterline.domain.errors import MeterlineError, NotFound
from meterline.domain.meters.model import Meter
from meterline.domain.meters.query import MeterQuery, QueryLimits, Row
from meterline.domain.meters.windows import WindowSize, zone
from meterline.ports.notifications import EventFilter, FiredEvent
from meterline.services.billing_invoices import BillingCredits, BillingInvoices
from meterline.services.customers import CustomerService
from meterline.services.entitlement_values import EntitlementValueService
from meterline.services.entitlements import EntitlementService
from meterline.services.features import FeatureService
from meterline.services.meters import MeterService
from meterline.services.notifications import NotificationService
from meterline.services.usage_queries import UsageQueries


@dataclass(frozen=True, slots=True)
class MeterUsage:
    meter: Meter
    total: Decimal | None
    windows: list[Row]
    """Per window (``window``), the customer's subjects combined."""
    groups: list[Row]
    """Per group value over the whole range (meters with a groupBy)."""


@dataclass(frozen=True, slots=True)
class Balance:
    entitlement: Entitlement
    meter: str | None
    value: Value | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    number: str
    period_start_us: int
    period_end_us: int
    currency: str
    total: Decimal
    status: str


@dataclass
class Report:
    key: str
    customer: Customer | None
    subjects: tuple[str, ...]
    usage: list[MeterUsage] = field(default_factory=list)
    balances: list[Balance] = field(default_factory=list)
    invoices: list[InvoiceLine] = field(default_factory=list)
    credits: CreditBalances | None = None
    alerts: list[FiredEvent] = field(default_factory=list)


class _Totals(msgspec.Struct):
    currency: str
    total: Decimal


class CustomerReports:
    def __init__(
        self,
        customers: CustomerService,
        meters: MeterService,
        usage: UsageQueries,
        features: FeatureService,
        entitlements: EntitlementService,
        values: EntitlementValueService,
        notifications: NotificationService,
        invoices: BillingInvoices,
        credits: BillingCredits,
        limits: QueryLimits,
    ) -> None:
        self._customers = customers
        self._meters = meters
        self._usage = usage
        self._features = features
        self._entitlements = entitlements
        self._values = values
        self._notifications = notifications
        self._invoices = invoices
        self._credits = credits
        self._limits = limits

    def support(self, namespace: str, key: str, start: int, end: int, window: WindowSize, tz: str) -> Report:
        """Everything about customer (or subject) ``key`` over ``[start, end)``."""
        report = self._base(namespace, key)
        if report.customer is None and not self._has_usage(namespace, report.subjects):
            raise NotFound(f"no customer or subject {key!r} in this namespace", code="customer_not_found")
        report.usage = self._usage_of(namespace, report.subjects, None, start, end, window, tz)
        if report.customer is not None:
            c = report.customer
            report.balances = self._balances(namespace, c, None)
            report.invoices = self._invoice_lines(namespace, c)
            report.credits = self._credits.balances(namespace, c.key)
            ids = (c.id, c.key)
            _, report.alerts = self._notifications_of(namespace, ids)
        return report

    def portal(
        self, namespace: str, subject: str, meters: Sequence[str] | None, start: int, end: int, tz: str
    ) -> Report:
        """What a portal token for ``subject`` (and ``meters``; None = all) may see."""
        report = self._base(namespace, subject)
        report.usage = self._usage_of(namespace, report.subjects, meters, start, end, WindowSize.DAY, tz)
        if report.customer is not None:
            report.balances = self._balances(namespace, report.customer, meters)
            report.invoices = self._invoice_lines(namespace, report.customer)
        return report

    # -- parts --------------------------------------------------------------------------------

    def _base(self, namespace: str, key: str) -> Report:
        try:
            customer: Customer | None = self._customers.get(namespace, key)
        except NotFound:
            customer = self._customers.owner(namespace, key)
        if customer is None:
            return Report(key, None, (key,))
        return Report(customer.key, customer, customer.usage_subjects)

    def _has_usage(self, namespace: str, subjects: tuple[str, ...]) -> bool:
        """Whether any meter holds usage of ``subjects`` (one total per meter). First over an
        explicit range of UTC days (not an open start, found by reading every subject's first
        rollup, nor an open "now", not on a quarter hour), which the subjects' month summaries
        answer; only when that finds nothing, over all time (event times outside it)."""
        meters = self._meters.list(namespace)
        for q in (MeterQuery(start=-FAR, end=FAR), MeterQuery()):
            q = _with(q, subjects=subjects, combine_subjects=True, limits=self._limits)
            if any(self._usage.query(namespace, m.slug, q)[1] for m in meters):
                return True
        return False

    def _usage_of(
        self,
        namespace: str,
        subjects: tuple[str, ...],
        allowed: Sequence[str] | None,
        start: int,
        end: int,
        window: WindowSize,
        tz: str,
    ) -> list[MeterUsage]:
        out = []
        for meter in self._meters.list(namespace):
            if allowed is not None and meter.slug not in allowed:
                continue
            base = MeterQuery(start=start, end=end, tz=zone(tz), subjects=subjects, combine_subjects=True,
                              limits=self._limits)  # fmt: skip
            _, total = self._usage.query(namespace, meter.slug, base)
            _, windows = self._usage.query(namespace, meter.slug, _with(base, window_size=window))
            groups: list[Row] = []
            if meter.spec.group_by:
                dims = tuple(sorted(meter.spec.group_by))
                _, groups = self._usage.query(namespace, meter.slug, _with(base, group_by=dims))
            out.append(MeterUsage(meter, total[0].value if total else None, windows, groups))
        return out

    def _balances(self, namespace: str, customer: Customer, allowed: Sequence[str] | None) -> list[Balance]:
        meters = {f.id: f.spec.meter_slug for f in self._features.list(namespace, include_archived=True)}
        out = []
        for ent in self._entitlements.of_customer(namespace, customer.key):
            meter = meters.get(ent.feature_id)
            if allowed is not None and (meter is None or meter not in allowed):
                continue  # a portal token sees only the entitlements of the meters it allows
            try:
                out.append(Balance(ent, meter, self._values.value(namespace, customer.key, ent.id)))
            except MeterlineError as exc:
                out.append(Balance(ent, meter, None, exc.detail))
        return out

    def _invoice_lines(self, namespace: str, customer: Customer) -> list[InvoiceLine]:
        return [_line(r) for r in reversed(self._invoices.list(namespace, customer.key))]

    def _notifications_of(self, namespace: str, ids: tuple[str, ...]) -> tuple[int, list[FiredEvent]]:
        total, views = self._notifications.events(namespace, EventFilter(customers=ids), limit=50, offset=0)
        return total, [v.event for v in views]


FAR = 2**31 - 2**31 % 86400
"""``-FAR`` .. ``FAR``: 1901-12-14 .. 2038-01-19, UTC midnights."""


def _with(q: MeterQuery, **changes: object) -> MeterQuery:
    return dataclasses.replace(q, **changes)  # type: ignore[arg-type]


def _line(r: InvoiceRecord) -> InvoiceLine:
    body = msgspec.json.decode(r.body, type=_Totals)
    return InvoiceLine(r.number, r.period_start_us, r.period_end_us, body.currency, body.total, r.status)
