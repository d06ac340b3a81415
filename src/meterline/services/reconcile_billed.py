"""Reconciliation's billed stage in quantities and money: every finalized window (its latest
live snapshot: the first invoice plus the adjustments carried since) against what is metered
for the same customer, meter and window now.

For each window and meter the difference ``metered now - billed`` is explained from the ledger
(``ReconciliationCounts.billed_changes``): entries received after the window was last billed
that arrived or were amended (``late_adjustment_pending``: the next invoice carries it) or that
voided an event (``voided_adjustment_pending``: likewise, as a negative adjustment). What the
ledger does not explain is ``unexplained``: the rollups (or an invoice snapshot) disagree with
the ledger. SUM and COUNT meters are explained exactly, quantity by quantity; for other
aggregations (a maximum, distinct values, a gauge) a changed window counts as late when entries
touched it since, and as unexplained when none did. ``amount`` is the money the adjustment the
window would get now carries for the meter (whole minor units of the plan's currency).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from meterline.domain.decimals import add
from meterline.domain.meters.model import Aggregation, Meter
from meterline.ports.reconciliation import BilledWindow, Change, ReconciliationCounts
from meterline.services.billing_invoices import BilledCheck, BillingInvoices

LATE = "late_adjustment_pending"
VOIDED = "voided_adjustment_pending"
UNEXPLAINED = "unexplained"
ADDITIVE = (Aggregation.SUM, Aggregation.COUNT)


@dataclass(frozen=True, slots=True)
class BilledLine:
    """One meter of one finalized window: billed and metered quantities, the difference by
    cause, and the money it moves."""

    meter: str
    customer: str
    invoice: str
    """The invoice that first billed the window."""
    window_start_us: int
    window_end_us: int
    currency: str
    billed: Decimal
    metered: Decimal
    amount: Decimal
    causes: tuple[tuple[str, Decimal], ...]

    @property
    def unexplained(self) -> Decimal:
        return sum((q for c, q in self.causes if c == UNEXPLAINED), Decimal(0))


def billed_lines(
    invoices: BillingInvoices,
    counts: ReconciliationCounts,
    namespace: str,
    meters: list[Meter],
    span_us: tuple[int, int],
    through: int,
) -> list[BilledLine]:
    """Every (finalized window, meter) of windows starting in ``span_us`` with its causes."""
    checks = invoices.billed_windows(namespace, *span_us)
    if not checks:
        return []
    windows = [_window(c) for c in checks]
    changes = counts.billed_changes(namespace, meters, windows, through)
    by_slug = {m.slug: m for m in meters}
    out = []
    for check, change in zip(checks, changes, strict=True):
        for slug in sorted(set(check.invoiced) | set(check.current)):
            meter = by_slug.get(slug)
            if meter is not None:
                out.append(_line(check, meter, change.get(slug, Change())))
    return out


def _window(c: BilledCheck) -> BilledWindow:
    w = c.billed.window.window
    return BilledWindow(c.subjects, w.start_us, w.end_us, c.billed.snapshot_us)


def _line(check: BilledCheck, meter: Meter, change: Change) -> BilledLine:
    slug = meter.slug
    billed = check.invoiced.get(slug, Decimal(0))
    metered = check.current.get(slug, Decimal(0))
    window = check.billed.window.window
    difference = add(metered, -billed)
    return BilledLine(
        slug,
        check.customer,
        check.billed.origin_number,
        window.start_us,
        window.end_us,
        check.currency,
        billed,
        metered,
        check.amounts.get(slug, Decimal(0)),
        _causes(meter, difference, change),
    )


def _causes(meter: Meter, difference: Decimal, change: Change) -> tuple[tuple[str, Decimal], ...]:
    if meter.spec.aggregation in ADDITIVE:
        rest = add(add(difference, -change.late), -change.voided)
        found = ((LATE, change.late), (VOIDED, change.voided), (UNEXPLAINED, rest))
        return tuple((c, q) for c, q in found if q)
    if not difference:
        return ()
    return ((LATE if change.entries else UNEXPLAINED, difference),)
