"""Reconciliation: for each period and meter, events accepted -> metered -> billed, and the
events that did not get through with the reason why.

Per meter and period (event time, cut in the requested zone):

- **accepted**: events of the meter's event type in the ledger, up to the position the rollups
  reflect, so lag is never mistaken for a loss (counted as the aggregator passes them: cheap
  for any range, and exact);
- **metered**: events the meter's rollups hold. ``accepted - metered`` are events the meter
  skipped (a value or group it could not read, or a time before its ``eventFrom``). For a
  UNIQUE_COUNT meter: the distinct values its rollups hold per subject, group value and UTC
  quarter hour, as ``reconcile`` compares them (no skipped count: values are not events);

Accepted and metered are read in one snapshot of the kept counts, so both reflect the same
ledger position (the report's ``position``) even while events arrive; the values are read
right after, at that position or a later one.
- **value**: the meter's usage (what is priced);
- **billed**: the quantity finalized invoices (not voided) priced for the meter, for billing
  windows that start in the period; ``value - billed`` is usage not (yet) invoiced: periods not
  closed, customers without a subscription, subjects no customer claims.

Beside them, per period of receipt: events **rejected** at ingest (dead letters, by reason and
event type) and **quarantined** (held until a customer claims the subject); together with the
accepted ones they are everything received (duplicates are recognised and never stored: the
on-call view and ``/metrics`` count them). Ledger types no meter reads are listed as accepted
but not metered.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

import msgspec

from meterline.domain.meters.model import Aggregation, Meter, is_builtin
from meterline.ports.reconciliation import ReconciliationCounts
from meterline.services.billing_invoices import BillingInvoices
from meterline.services.insights import Insights, Span


@dataclass
class MeterLine:
    meter: Meter
    accepted: list[int]
    metered: list[int]
    """Events the rollups hold; distinct values for a UNIQUE_COUNT meter (as ``reconcile``)."""
    value: list[Decimal | None]
    billed: list[Decimal]

    @property
    def distinct(self) -> bool:
        """Whether ``metered`` counts distinct values, not events."""
        return self.meter.spec.aggregation is Aggregation.UNIQUE_COUNT

    @property
    def skipped(self) -> list[int | None]:
        if self.distinct:  # events and distinct values do not subtract
            return [None] * len(self.metered)
        return [a - m for a, m in zip(self.accepted, self.metered, strict=True)]

    @property
    def unbilled(self) -> list[Decimal | None]:
        if self.meter.spec.aggregation not in (Aggregation.SUM, Aggregation.COUNT):
            return [None] * len(self.value)
        return [None if v is None else v - b for v, b in zip(self.value, self.billed, strict=True)]


@dataclass
class Report:
    starts: list[int]
    position: int
    """Accepted and metered counts reflect the ledger up to here (one read snapshot); values
    are read right after it, at this position or a later one."""
    position_us: int | None
    """The receipt time of the entry at ``position``."""
    meters: list[MeterLine] = field(default_factory=list)
    unmetered: dict[str, list[int]] = field(default_factory=dict)
    """Ledger event types no meter reads: type -> accepted per period."""
    rejected: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    """(reason, event type) -> rejected per period of receipt."""
    quarantined: dict[str, list[int]] = field(default_factory=dict)
    """type -> held per period of receipt."""

    def received(self) -> list[int]:
        """Everything received per period, as stored: accepted (any type), rejected, quarantined."""
        totals = [0] * len(self.starts)
        types = {line.meter.spec.event_type: line.accepted for line in self.meters}  # once per type
        for accepted in types.values():
            _add(totals, accepted)
        for rows in (self.unmetered.values(), self.rejected.values(), self.quarantined.values()):
            for row in rows:
                _add(totals, row)
        return totals


class _Window(msgspec.Struct):
    start: str
    usage: list[dict[str, object]] = []


class _Windows(msgspec.Struct):
    windows: list[_Window] = []


class Reconciliation:
    def __init__(self, counts: ReconciliationCounts, insights: Insights, invoices: BillingInvoices) -> None:
        self._counts = counts
        self._insights = insights
        self._invoices = invoices

    @property
    def invoices(self) -> BillingInvoices:
        """The finalized invoices the billed stage compares against."""
        return self._invoices

    def report(self, namespace: str, span: Span) -> Report:
        """The report of ``span``: every column, from counts kept as the aggregator passes the
        ledger, rollups and indexes (no scan of the ledger)."""
        bounds = span.boundaries()
        start, end = bounds[0], bounds[-1]
        # a built-in meter counts no event type of its own: its events are every other line's
        meters = [m for m in self._insights.meters(namespace) if not is_builtin(m.spec)]
        counted = self._counts.counted(namespace, meters, start, end, bounds)  # one snapshot: one position
        report = Report(bounds[:-1], counted.position, counted.position_us)
        billed = self._billed(namespace, bounds)
        by_type: dict[str, list[int]] = defaultdict(lambda: [0] * (len(bounds) - 1))
        for (type_, bucket), n in counted.accepted.items():
            by_type[type_][_index(bounds, bucket)] += n
        for m in meters:
            per = [0] * (len(bounds) - 1)
            for bucket, n in counted.metered.get(m.slug, {}).items():
                per[_index(bounds, bucket)] += n
            value = self._insights.usage(namespace, m, span).values
            zero = [Decimal(0)] * len(per)
            of_type = by_type.get(m.spec.event_type, [0] * len(per))
            report.meters.append(MeterLine(m, of_type, per, value, billed.get(m.slug, zero)))
        read = {m.spec.event_type for m in meters}
        report.unmetered = {t: v for t, v in sorted(by_type.items()) if t not in read}
        rejected = self._counts.rejected(namespace, start, end)
        report.rejected = _periods(bounds, (((r, t), b, n) for (r, t, b), n in rejected.items()))
        held = self._counts.quarantined(namespace, start, end)
        report.quarantined = _periods(bounds, ((t, b, n) for (t, b), n in held.items()))
        return report

    def _billed(self, namespace: str, bounds: list[int]) -> dict[str, list[Decimal]]:
        """Quantities priced on finalized invoices per meter, by the billing window's start."""
        out: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0)] * (len(bounds) - 1))
        # an invoice's period may start before the range while a window of it starts inside
        records = self._invoices.list(namespace, None, None, bounds[-1] * 1_000_000)
        for record in records:
            if record.voided_us is not None:
                continue
            for window in msgspec.json.decode(record.body, type=_Windows).windows:
                at = _seconds(window.start)
                if not bounds[0] <= at < bounds[-1]:
                    continue
                i = _index(bounds, at)
                for meter, quantity in _priced(window.usage).items():
                    out[meter][i] += quantity
        return out


def _priced(usage: list[dict[str, object]]) -> dict[str, Decimal]:
    """A billing window's quantity per meter: its total, or the sum of its groups when the
    window holds only per-group quantities (each unit counted once either way)."""
    totals: dict[str, Decimal] = {}
    groups: dict[str, Decimal] = defaultdict(Decimal)
    for entry in usage:
        meter, quantity = entry.get("meter"), entry.get("quantity")
        if not isinstance(meter, str) or quantity is None:
            continue
        if entry.get("group"):
            groups[meter] += Decimal(str(quantity))
        else:
            totals[meter] = Decimal(str(quantity))
    return {**groups, **totals}


K = TypeVar("K", str, tuple[str, str])


def _seconds(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())


def _index(bounds: list[int], at: int) -> int:
    return max(0, min(len(bounds) - 2, bisect.bisect_right(bounds, at) - 1))


def _periods(bounds: list[int], items: Iterable[tuple[K, int, int]]) -> dict[K, list[int]]:
    """(key, bucket, count) rows added up per key and period."""
    out: dict[K, list[int]] = {}
    for key, bucket, n in items:
        out.setdefault(key, [0] * (len(bounds) - 1))[_index(bounds, bucket)] += n
    return dict(sorted(out.items()))


def _add(totals: list[int], row: list[int]) -> None:
    for i, n in enumerate(row):
        totals[i] += n
