"""Chargeback / showback: usage x price per customer and per group-by dimension, for any period.

A report is computed, never stored: each customer's windows in the period are priced with
``price_period`` exactly as an invoice would be (flat fees prorated to the part of the period
asked for), and every line becomes a row. Asked to split by a dimension, a usage line of a
card that is not already priced per that dimension is split into one row per value: the
value's quantity, and the line's rounded amount allocated in proportion to the quantities
(``money.allocate``: whole minor units that add up to the line exactly). Totals add rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal

import msgspec

from meterline.domain.billing.lines import InvoiceDraft, InvoiceLine, UsageKey
from meterline.domain.billing.money import allocate, currency, total


class ReportRow(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    customer: str
    plan: str
    version: int
    currency: str
    start: datetime
    end: datetime
    kind: str
    name: str
    amount: Decimal
    card: str | None = None
    meter: str | None = None
    group: dict[str, str] | None = None
    quantity: Decimal | None = None


class ReportTotal(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    currency: str
    amount: Decimal
    customer: str | None = None


def report_rows(
    customer: str, draft: InvoiceDraft, dimension: str | None = None, split: Mapping[UsageKey, Decimal] | None = None
) -> list[ReportRow]:
    """The rows of one priced window; ``split`` holds its usage per value of ``dimension``."""
    rows: list[ReportRow] = []
    for line in draft.lines:
        parts = _parts(line, dimension, split or {})
        if not parts:
            rows.append(_row(customer, draft, line, line.group, line.quantity, line.amount))
            continue
        amounts = allocate(line.amount, [q for _, q in parts], currency(draft.currency))
        for (value, quantity), amount in zip(parts, amounts, strict=True):
            rows.append(_row(customer, draft, line, {str(dimension): value}, quantity, amount))
    return rows


def totals(rows: Sequence[ReportRow]) -> list[ReportTotal]:
    """Per customer and currency, then per currency over all customers."""
    per: dict[tuple[str | None, str], list[Decimal]] = {}
    for row in rows:
        per.setdefault((row.customer, row.currency), []).append(row.amount)
        per.setdefault((None, row.currency), []).append(row.amount)
    keys = sorted(per, key=lambda k: (k[0] is None, k[0] or "", k[1]))
    return [ReportTotal(cur, total(per[(who, cur)]), who) for who, cur in keys]


def _parts(line: InvoiceLine, dimension: str | None, split: Mapping[UsageKey, Decimal]) -> list[tuple[str, Decimal]]:
    if dimension is None or line.kind != "usage" or line.group or line.meter is None:
        return []
    parts = sorted((g[0][1], q) for (m, g), q in split.items() if m == line.meter and g and g[0][0] == dimension and q)
    return parts if sum(q for _, q in parts) > 0 else []


def _row(
    customer: str,
    draft: InvoiceDraft,
    line: InvoiceLine,
    group: dict[str, str] | None,
    quantity: Decimal | None,
    amount: Decimal,
) -> ReportRow:
    return ReportRow(
        customer,
        draft.plan,
        draft.version,
        draft.currency,
        line.start or draft.start,
        line.end or draft.end,
        line.kind,
        line.name,
        amount,
        line.card,
        line.meter,
        group,
        quantity,
    )
