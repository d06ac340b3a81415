"""Insights: the executive numbers of a namespace over a range, cut into days, weeks or months.

Built from the other services only (usage queries read rollups, never raw events):

- usage per meter per period; top customers of a meter; growth against the previous range;
- feature adoption: the share of customers with usage of each metered feature in the range
  (customers are the namespace's customers; a subject with usage that no customer claims
  counts as a customer of its own, as OpenMeter's subjects do);
- top customers and adoption come from each meter's usage per subject over the range, ranked
  where it is stored when the store can (``ports.meters.UsageRanking``: the embedded store
  returns the top and the counts, not 10,000 subjects' values), else ranked here from the
  meter query's rows, with the same order and values;
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
from meterline.domain.meters.top import OwnerRanks
from meterline.domain.meters.windows import WindowSize
from meterline.ports.meters import UsageRanking
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
    """Every meter's usage over one range, ranked (:meth:`Insights.rankings`)."""

    meters: dict[str, Meter]
    by_meter: dict[str, OwnerRanks]
    """Meter slug -> its top users and who used it."""
    customers: int
    """The namespace's live customers."""


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
        ranking: UsageRanking | None = None,
    ) -> None:
        self._ranking = ranking
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

    def rankings(self, namespace: str, span: Span, limit: int = 10) -> Rankings:
        """Every meter's usage per subject over the range, ranked with ``limit`` entries (one
        read per meter, for both :meth:`top_customers` and :meth:`adoption`): by the store when
        it can, else here from the meter query's rows and the customers' claims."""
        starts = span.boundaries()
        q = MeterQuery(start=starts[0], end=starts[-1], tz=span.tz, group_by=(SUBJECT,), limits=self._limits)
        meters = self._meters.list(namespace)
        by_meter: dict[str, OwnerRanks] = {}
        claims: tuple[dict[str, str], int] | None = None
        for meter in meters:
            ranks = None if self._ranking is None else self._ranking.rank(meter, q, limit)
            if ranks is None:
                if claims is None:
                    customers = self._customers.list(namespace)
                    claims = _owners(customers), len({c.key for c in customers})
                _, rows = self._usage.query(namespace, meter.slug, q)
                values = {row.subject or "": row.value for row in rows}
                ranks = owner_ranks(values, claims[0], meter.spec.aggregation in ADDITIVE, limit, claims[1])
            by_meter[meter.slug] = ranks
        population = next(iter(by_meter.values())).customers if by_meter else 0
        return Rankings({m.slug: m for m in meters}, by_meter, population)

    def top_customers(self, rankings: Rankings, meter: Meter, limit: int = 10) -> list[Ranked]:
        """The customers with the most usage of ``meter`` (additive meters; subjects otherwise)."""
        ranks = rankings.by_meter.get(meter.slug)
        return [] if ranks is None else [Ranked(name, value) for name, value in ranks.top[:limit]]

    def adoption(self, namespace: str, rankings: Rankings) -> list[Adoption]:
        """For each metered feature (or meter without one), how many customers used it."""
        unclaimed = frozenset[str]().union(*(r.unowned for r in rankings.by_meter.values()))
        population = rankings.customers + len(unclaimed)
        used = {slug: r.owned + len(r.unowned) for slug, r in rankings.by_meter.items()}
        features = [(f.key, f.spec.meter_slug) for f in self._features.list(namespace) if f.spec.meter_slug]
        covered = {slug for _, slug in features}
        rows_ = [(key, slug) for key, slug in features if slug in used]
        rows_ += [(slug, slug) for slug in used if slug not in covered]
        return [Adoption(key, slug, used[slug], population) for key, slug in rows_]

    def revenue(self, namespace: str, span: Span, limit: int = 10, names: dict[str, str] | None = None) -> Revenue:
        """Finalized invoices by the period they bill: per period and currency, and the top
        customers (``names``: customer id -> key; the invoiced customers' keys are read when
        not given)."""
        starts = span.boundaries()
        prev_start, _ = _previous(starts)
        records = [
            r
            for r in self._invoices.list(namespace, None, prev_start * 1_000_000, starts[-1] * 1_000_000)
            if not r.voided_us
        ]
        if names is None:
            names = self._keys(namespace, {r.customer_id for r in records})
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

    def _keys(self, namespace: str, ids: set[str]) -> dict[str, str]:
        """Customer id -> key of the live customers among ``ids``."""
        if self._ranking is not None:
            return self._ranking.keys(namespace, ids)
        return {c.id: c.key for c in self._customers.list(namespace) if c.id in ids}

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


def owner_ranks(
    values: dict[str, Decimal], owners: dict[str, str], additive: bool, limit: int, customers: int
) -> OwnerRanks:
    """``values`` (subject -> usage) ranked: per owner (``owners``: subject -> customer key;
    a subject nobody claims is its own) where ``additive``, else per subject; the ``limit``
    largest, ties by name, then the zeros dropped; and who used the meter (a value other than 0)."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for subject, value in values.items():
        totals[owners.get(subject, subject) if additive else subject] += value
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    used = [subject for subject, value in values.items() if value]
    owned = {owners[s] for s in used if s in owners}
    unowned = frozenset(s for s in used if s not in owners)
    return OwnerRanks([(name, value) for name, value in ranked if value], len(owned), unowned, customers)


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
