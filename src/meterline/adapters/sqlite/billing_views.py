"""Read-only billing views over stored data: the chargeback/showback report."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from meterline.adapters.sqlite.billing import SqliteBilling, aligned
from meterline.adapters.sqlite.billing_pricer import Ask, Failed, Pricer
from meterline.domain.billing import BillingWindow, Subscription, UsageKey
from meterline.domain.billing.report import ReportRow, ReportTotal, report_rows, totals
from meterline.domain.billing.subscriptions import iter_billing_windows
from meterline.domain.clock import to_us
from meterline.domain.errors import InvalidInput
from meterline.domain.meters.query import too_many_rows
from meterline.domain.periods import Period


@dataclass(frozen=True, slots=True)
class Report:
    start: datetime
    end: datetime
    group_by: str | None
    rows: list[ReportRow]
    totals: list[ReportTotal]
    problems: list[str]


def showback(
    billing: SqliteBilling,
    namespace: str,
    start: datetime,
    end: datetime,
    *,
    customer: str | None = None,
    group_by: str | None = None,
    max_windows: int | None = None,
) -> Report:
    """Usage x price per customer (and per value of ``group_by``) over ``[start, end)``.

    With ``max_windows``, a report over more billing windows (each at least one row) raises
    ``too_many_rows`` before any of them is priced, however long the range."""
    aligned("from", start)
    aligned("to", end)
    if to_us(end) <= to_us(start):
        raise InvalidInput("`to` must be after `from`", code="invalid_range")
    pricer = Pricer(billing, namespace)
    customer_id = None if customer is None else billing.customers.get(namespace, customer).id
    asks: list[Ask] = []
    for sub in billing.subscriptions(namespace, customer_id):
        if sub.customer_id not in pricer.customers:
            continue
        plan = pricer.plan(sub.subscription.plan, sub.subscription.version)
        for w in _windows(sub.subscription, plan.cadence, start, end):
            if max_windows is not None and len(asks) >= max_windows:
                raise too_many_rows(max_windows)
            asks.append(Ask(sub.customer_id, plan, w))
    priced = pricer.price(asks, allow_unpriced=True)
    splits = _splits(pricer, asks, group_by)
    rows: list[ReportRow] = []
    problems: list[str] = []
    for ask, result, split in zip(asks, priced, splits, strict=True):
        key = pricer.customer(ask.customer_id).key
        if isinstance(result, Failed):
            problems.append(f"{key}: {result.detail}")
            continue
        rows += report_rows(key, result.draft, group_by, split)
    return Report(start, end, group_by, rows, totals(rows), problems)


def _windows(sub: Subscription, cadence: str, start: datetime, end: datetime) -> Iterator[BillingWindow]:
    since = start if sub.start < start and (sub.end is None or start < sub.end) else None
    for w in iter_billing_windows(sub, cadence, until=end, since=since):
        lo, hi = max(w.window.start_us, to_us(start)), min(w.window.end_us, to_us(end))
        if lo < hi:
            zone = w.period.start.tzinfo
            clip = Period(
                w.window.start if lo == w.window.start_us else start.astimezone(zone),
                w.window.end if hi == w.window.end_us else end.astimezone(zone),
            )
            yield BillingWindow(w.period, clip)


def _splits(pricer: Pricer, asks: list[Ask], dimension: str | None) -> list[dict[UsageKey, Decimal]]:
    if dimension is None:
        return [{} for _ in asks]
    queries = [
        tuple(
            (str(card.meter), dimension)
            for card in ask.plan.cards
            if card.meter and card.group_by != dimension and dimension in pricer.meter_dimensions(card.meter)
        )
        for ask in asks
    ]
    return pricer.usage_of([(a.customer_id, a.window.window, q) for a, q in zip(asks, queries, strict=True)])
