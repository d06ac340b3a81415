"""The chargeback/showback report: usage x price per customer (and per value of a dimension)
over any minute-aligned range, computed on request from today's usage; nothing is stored."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from meterline.domain.billing import BillingWindow, Subscription, UsageKey
from meterline.domain.billing.report import ReportRow, ReportTotal, report_rows, totals
from meterline.domain.billing.subscriptions import aligned, iter_billing_windows
from meterline.domain.clock import to_us
from meterline.domain.errors import InvalidInput
from meterline.domain.meters.query import too_many_rows
from meterline.domain.periods import Period
from meterline.ports.billing import BillingStores
from meterline.services.billing_pricer import Ask, Failed, Pricer


@dataclass(frozen=True, slots=True)
class Report:
    start: datetime
    end: datetime
    group_by: str | None
    rows: list[ReportRow]
    totals: list[ReportTotal]
    problems: list[str]


class Showback:
    def __init__(self, stores: BillingStores, max_windows: int | None = None) -> None:
        self._stores = stores
        self._max_windows = max_windows

    def report(
        self,
        namespace: str,
        start: datetime,
        end: datetime,
        *,
        customer: str | None = None,
        group_by: str | None = None,
    ) -> Report:
        """Usage x price per customer (and per value of ``group_by``) over ``[start, end)``.

        A report over more billing windows than ``max_windows`` (each at least one row) raises
        ``too_many_rows`` before any of them is priced, however long the range."""
        aligned("from", start)
        aligned("to", end)
        if to_us(end) <= to_us(start):
            raise InvalidInput("`to` must be after `from`", code="invalid_range")
        pricer = Pricer(self._stores, namespace)
        asks = self._asks(pricer, namespace, start, end, customer)
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

    def _asks(self, pricer: Pricer, namespace: str, start: datetime, end: datetime, customer: str | None) -> list[Ask]:
        customer_id = None if customer is None else self._stores.directory.customer(namespace, customer).id
        asks: list[Ask] = []
        for sub in self._stores.subscriptions.list(namespace, customer_id):
            if sub.customer_id not in pricer.customers:
                continue
            plan = pricer.plan(sub.subscription.plan, sub.subscription.version)
            for w in _windows(sub.subscription, plan.cadence, start, end):
                if self._max_windows is not None and len(asks) >= self._max_windows:
                    raise too_many_rows(self._max_windows)
                asks.append(Ask(sub.customer_id, plan, w))
        return asks


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
