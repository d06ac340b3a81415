"""Adjustments: late or corrected usage for an already invoiced window.

A finalized invoice never changes. When the usage now known for a past window differs from what
was invoiced, :func:`adjust` re-prices the WHOLE window twice with the plan version that was in
force (same window, same proration): once with the usage that was invoiced, which reproduces
the original lines exactly because pricing is deterministic, and once with the usage known now.
Every line whose rounded amount changed becomes an ``adjustment`` line carrying the difference
(positive or negative) and the original invoice number in ``references``. Because both amounts
are already rounded, the difference needs no rounding. Tiers therefore see the window's full
corrected quantity: late units are priced at the tier they really fall in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

import msgspec

from meterline.domain.billing.invoice import Usage, price_period
from meterline.domain.billing.lines import InvoiceLine
from meterline.domain.billing.money import ZERO, sub, total
from meterline.domain.billing.plans import PlanVersion, check_plan
from meterline.domain.periods import Period

_ADJUSTED = "Adjustment: "
_CHARGED = "Charged on "


class Adjustment(msgspec.Struct, frozen=True, rename="camel"):
    """Adjustment lines for one invoiced window, their total, and usage no price covers."""

    references: str
    lines: tuple[InvoiceLine, ...]
    total: Decimal
    unpriced: tuple[str, ...] = ()


def adjust(
    plan: PlanVersion,
    window: Period,
    invoiced: Usage,
    current: Usage,
    *,
    invoice_number: str,
    period: Period | None = None,
) -> Adjustment:
    """The lines that bring invoice ``invoice_number`` (``window``, ``invoiced`` usage) to ``current``."""
    check_plan(plan)
    before = price_period(plan, window, invoiced, period=period, validated=True)
    after = price_period(plan, window, current, period=period, validated=True)
    old = {line.match_key: line for line in before.lines}
    new = {line.match_key: line for line in after.lines}
    keys = list(new) + [key for key in old if key not in new]
    lines = tuple(line for key in keys if (line := _difference(old.get(key), new.get(key), invoice_number)) is not None)
    return Adjustment(invoice_number, lines, total(line.amount for line in lines), after.unpriced)


def cite(adjustment: Adjustment, cited: Mapping[str, tuple[int, ...]]) -> Adjustment:
    """The adjustment with each line of a meter in ``cited`` (meter slug -> correction seqs)
    naming those corrections."""
    lines = tuple(
        msgspec.structs.replace(line, corrections=cited[line.meter])
        if line.meter is not None and line.meter in cited
        else line
        for line in adjustment.lines
    )
    return msgspec.structs.replace(adjustment, lines=lines)


def reversal(lines: Sequence[InvoiceLine], carried_on: str) -> Adjustment:
    """Lines that take back the adjustment ``lines`` invoice ``carried_on`` charged for a window
    whose voided invoice is being replaced: the replacement prices the window in full with the
    usage known now, so what ``carried_on`` already charged for it is netted out (negated amount
    and quantity, ``references`` naming ``carried_on``)."""
    taken = tuple(
        msgspec.structs.replace(
            line,
            name=f"Charged on {carried_on}: {_label(line.name)}",
            amount=sub(ZERO, line.amount),
            exact_amount=sub(ZERO, line.amount),
            quantity=None if line.quantity is None else sub(ZERO, line.quantity),
            references=carried_on,
        )
        for line in lines
        if line.kind == "adjustment"
    )
    return Adjustment(carried_on, taken, total(line.amount for line in taken))


def _label(name: str) -> str:
    """A line's name without the prefix this module gave it."""
    if name.startswith(_ADJUSTED):
        return name[len(_ADJUSTED) :]
    if name.startswith(_CHARGED):
        return name.split(": ", 1)[-1]
    return name


def _difference(old: InvoiceLine | None, new: InvoiceLine | None, reference: str) -> InvoiceLine | None:
    base = new or old
    assert base is not None
    amount = sub(_amount(new), _amount(old))
    quantity = sub(_quantity(new), _quantity(old))
    if amount == 0:
        return None
    return msgspec.structs.replace(
        base,
        kind="adjustment",
        name=f"{_ADJUSTED}{base.name}",
        amount=amount,
        exact_amount=amount,
        quantity=quantity if base.quantity is not None else None,
        steps=(),
        proration=None,
        references=reference,
    )


def _amount(line: InvoiceLine | None) -> Decimal:
    return ZERO if line is None else line.amount


def _quantity(line: InvoiceLine | None) -> Decimal:
    return ZERO if line is None or line.quantity is None else line.quantity
