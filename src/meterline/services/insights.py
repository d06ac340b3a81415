"""Insights: the executive numbers of a namespace over a range, cut into days, weeks or months.

Built from the other services only (usage queries read rollups, never raw events):

- usage per meter per period; top customers of a meter; growth against the previous range;
- feature adoption: the share of customers with usage of each metered feature in the range
  (customers are the namespace's customers; a subject with usage that no customer claims
  counts as a customer of its own, as OpenMeter's subjects do);
- billed amounts: finalized invoices (voided ones left out) whose period starts in the range,
  per customer and per period, in each invoice's currency.

Weeks start on Monday in the requested zone. Days and months are the meter query's own windows;
a week adds its days up for SUM and COUNT, takes the extreme for MIN and MAX, and is queried as
one window for AVG, UNIQUE_COUNT and LATEST (which do not add up).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from itertools import pairwise
from zoneinfo import ZoneInfo

import msgspec

from meterline.domain.billing.records import InvoiceRecord
from meterline.domain.customers.model import Customer
from meterline.domain.errors import InvalidInput
from meterline.domain.meters.model import Aggregation, Meter
from meterline.domain.meters.query import SUBJECT, MeterQuery, QueryLimits
from meterline.domain.meters.windows import WindowSize
from meterline.services.billing_invoices import BillingInvoices
from meterline.services.customers import CustomerService
from meterline.services.features import FeatureService
from meterline.services.meters import MeterService
from meterline.services.usage_queries import UsageQueries

ADDITIVE = (Aggregation.SUM, Aggregation.COUNT, Aggregation.TIME_WEIGHTED_SUM)  # values of periods add up
MAX_PERIODS = 400


class Grain(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class Span:
    """``[start, end)`` in epoch seconds, cut into ``grain`` periods in ``tz``."""

    start: int
    end: int
    grain: Grain
    tz: ZoneInfo

    def boundaries(self) -> list[int]:
        """Period starts from the one holding ``start`` up to the first at or after ``end``."""
        local = _floor(datetime.fromtimestamp(self.start, self.tz), self.grain)
        out = [int(local.timestamp())]
        while out[-1] < self.end:
            local = _next(local, self.grain)
            out.append(int(local.timestamp()))
            if len(out) > MAX_PERIODS + 1:
                raise InvalidInput(
                    f"the range holds more than {MAX_PERIODS} {self.grain.value}s; choose a shorter range or a"
                    " longer period",
                    code="too_many_windows",
                )
        return out

    def previous(self) -> Span:
        """The range just before, as long as this one."""
        return Span(2 * self.start - self.end, self.start, self.grain, self.tz)


@dataclass(frozen=True, slots=True)
class Series:
    meter: Meter
    starts: list[int]
    values: list[Decimal | None]
    total: Decimal | None
    previous: Decimal | None

    @property
    def growth(self) -> Decimal | None:
        if self.total is None or not self.previous:
            return None
        return (self.total - self.previous) / self.previous


@dataclass(frozen=True, slots=True)
class Ranked:
    name: str
    value: Decimal
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Adoption:
    feature: str
    meter: str
    customers: int
    population: int

    @property
    def share(self) -> Decimal | None:
        return None if not self.population else Decimal(self.customers) / Decimal(self.population)


@dataclass(frozen=True, slots=True)
class Rankings:
    """Usage per subject of every meter over one range (:meth:`Insights.rankings`)."""

    owners: dict[str, str]
    """Subject -> the key of the customer that claims it."""
    names: dict[str, str]
    """Customer id -> its key (read once with the owners, for the billed-amount ranking)."""
    meters: dict[str, Meter]
    by_meter: dict[str, dict[str, Decimal]]
    """Meter slug -> subject -> usage over the range."""


@dataclass(frozen=True, slots=True)
class Revenue:
    starts: list[int]
    by_currency: dict[str, list[Decimal]]
    previous: dict[str, Decimal]
    top: list[Ranked]
    invoices: int

    def total(self, currency: str) -> Decimal:
        return sum(self.by_currency.get(currency, []), Decimal(0))


class _InvoiceBody(msgspec.Struct):
    currency: str
    total: Decimal
    customer: str = ""
    customerName: str | None = None


class Insights:
    def __init__(
        self,
        meters: MeterService,
        usage: UsageQueries,
        customers: CustomerService,
        features: FeatureService,
        invoices: BillingInvoices,
        limits: QueryLimits,
    ) -> None:
        self._meters = meters
        self._usage = usage
        self._customers = customers
        self._features = features
        self._invoices = invoices
        self._limits = limits

    def meters(self, namespace: str) -> list[Meter]:
        return self._meters.list(namespace)

    def usage(self, namespace: str, meter: Meter, span: Span) -> Series:
        """``meter``'s usage per period of ``span`` and in total, and its total over the range before."""
        starts = span.boundaries()
        values = self._per_period(namespace, meter, starts, span)
        return Series(
            meter,
            starts[:-1],
            values,
            self._total(namespace, meter, starts[0], starts[-1]),
            self._total(namespace, meter, *_previous(starts)),
        )

    def rankings(self, namespace: str, span: Span) -> Rankings:
        """Every meter's usage per subject over the range (one query per meter, read once for
        both :meth:`top_customers` and :meth:`adoption`), and who claims each subject."""
        starts = span.boundaries()
        q = MeterQuery(start=starts[0], end=starts[-1], tz=span.tz, group_by=(SUBJECT,), limits=self._limits)
        by_meter: dict[str, dict[str, Decimal]] = {}
        meters = self._meters.list(namespace)
        for meter in meters:
            _, rows = self._usage.query(namespace, meter.slug, q)
            by_meter[meter.slug] = {row.subject or "": row.value for row in rows}
        customers = self._customers.list(namespace)
        return Rankings(_owners(customers), {c.id: c.key for c in customers}, {m.slug: m for m in meters}, by_meter)

    def top_customers(self, rankings: Rankings, meter: Meter, limit: int = 10) -> list[Ranked]:
        """The customers with the most usage of ``meter`` (additive meters; subjects otherwise)."""
        totals: dict[str, Decimal] = defaultdict(Decimal)
        additive = meter.spec.aggregation in ADDITIVE
        for subject, value in rankings.by_meter.get(meter.slug, {}).items():
            totals[rankings.owners.get(subject, subject) if additive else subject] += value
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return [Ranked(name, value) for name, value in ranked if value]

    def adoption(self, namespace: str, rankings: Rankings) -> list[Adoption]:
        """For each metered feature (or meter without one), how many customers used it."""
        owners = rankings.owners
        population = set(owners.values())
        used: dict[str, set[str]] = {}
        for slug, values in rankings.by_meter.items():
            users = {owners.get(subject, subject) for subject, value in values.items() if value}
            used[slug] = users
            population |= users
        features = [(f.key, f.spec.meter_slug) for f in self._features.list(namespace) if f.spec.meter_slug]
        covered = {slug for _, slug in features}
        rows_ = [(key, slug) for key, slug in features if slug in used]
        rows_ += [(slug, slug) for slug in used if slug not in covered]
        return [Adoption(key, slug, len(used[slug]), len(population)) for key, slug in rows_]

    def revenue(self, namespace: str, span: Span, limit: int = 10, names: dict[str, str] | None = None) -> Revenue:
        """Finalized invoices by the period they bill: per period and currency, and the top
        customers (``names``: customer id -> key, as :attr:`Rankings.names`; read when not given)."""
        starts = span.boundaries()
        prev_start, _ = _previous(starts)
        records = [
            r
            for r in self._invoices.list(namespace, None, prev_start * 1_000_000, starts[-1] * 1_000_000)
            if not r.voided_us
        ]
        if names is None:
            names = {c.id: c.key for c in self._customers.list(namespace)}
        by_currency: dict[str, list[Decimal]] = {}
        previous: dict[str, Decimal] = defaultdict(Decimal)
        per_customer: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        counted = 0
        for record in records:
            body = _body(record)
            at = record.period_start_us // 1_000_000
            if at < starts[0]:
                previous[body.currency] += body.total
                continue
            counted += 1
            series = by_currency.setdefault(body.currency, [Decimal(0)] * (len(starts) - 1))
            series[bisect.bisect_right(starts, at) - 1] += body.total
            per_customer[(names.get(record.customer_id, record.customer_id), body.currency)] += body.total
        top = sorted(per_customer.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return Revenue(starts[:-1], by_currency, dict(previous), [Ranked(n, v, c) for (n, c), v in top], counted)

    # -- helpers ------------------------------------------------------------------------------

    def _per_period(self, namespace: str, meter: Meter, starts: list[int], span: Span) -> list[Decimal | None]:
        aggregation = meter.spec.aggregation
        if span.grain is Grain.WEEK and aggregation not in (*ADDITIVE, Aggregation.MIN, Aggregation.MAX):
            return [self._total(namespace, meter, a, b) for a, b in pairwise(starts)]
        size = WindowSize.MONTH if span.grain is Grain.MONTH else WindowSize.DAY
        q = MeterQuery(start=starts[0], end=starts[-1], window_size=size, tz=span.tz, limits=self._limits)
        _, rows = self._usage.query(namespace, meter.slug, q)
        values: list[Decimal | None] = [None] * (len(starts) - 1)
        for row in rows:
            i = bisect.bisect_right(starts, row.window_start) - 1
            values[i] = _merge(aggregation, values[i], row.value)
        return values

    def _total(self, namespace: str, meter: Meter, start: int, end: int) -> Decimal | None:
        _, rows = self._usage.query(namespace, meter.slug, MeterQuery(start=start, end=end, limits=self._limits))
        return rows[0].value if rows else None


def _owners(customers: list[Customer]) -> dict[str, str]:
    """Subject -> the key of the customer whose usage it is: the customer keyed by it, else
    the one claiming it as a subject key (OpenMeter's attribution, ``Customer.usage_subjects``)."""
    owners = {s: c.key for c in customers for s in c.subjects}
    owners.update({c.key: c.key for c in customers})
    return owners


def _merge(aggregation: Aggregation, a: Decimal | None, b: Decimal) -> Decimal:
    if a is None:
        return b
    if aggregation is Aggregation.MIN:
        return min(a, b)
    if aggregation is Aggregation.MAX:
        return max(a, b)
    return a + b


def _previous(starts: list[int]) -> tuple[int, int]:
    return 2 * starts[0] - starts[-1], starts[0]


def _body(record: InvoiceRecord) -> _InvoiceBody:
    return msgspec.json.decode(record.body, type=_InvoiceBody)


def _floor(local: datetime, grain: Grain) -> datetime:
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if grain is Grain.WEEK:
        day -= timedelta(days=day.weekday())
    elif grain is Grain.MONTH:
        day = day.replace(day=1)
    return day.replace(tzinfo=local.tzinfo)


def _next(local: datetime, grain: Grain) -> datetime:
    naive = local.replace(tzinfo=None)
    if grain is Grain.DAY:
        naive += timedelta(days=1)
    elif grain is Grain.WEEK:
        naive += timedelta(days=7)
    else:
        naive = (naive.replace(day=28) + timedelta(days=4)).replace(day=1)
    return naive.replace(tzinfo=local.tzinfo)
