"""Invoice exports: CSV line items, the printable HTML invoice, and accounting exports.

HTML is rendered by Jinja2 with autoescaping on (customer names and line names are data, never
markup); money and quantities are formatted by Babel for the configured locale. These are views
of the stored invoice and never feed back into it: the JSON document stays the source of truth.
"""

from __future__ import annotations

import decimal
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache

from babel.dates import format_date
from babel.numbers import format_currency, format_decimal
from jinja2 import Environment, PackageLoader, select_autoescape

from meterline.domain import csvsafe
from meterline.domain.billing.charges import Step
from meterline.domain.billing.documents import Invoice, timestamp
from meterline.domain.billing.lines import InvoiceLine
from meterline.domain.decimals import EXACT

LINE_COLUMNS = (
    "invoice",
    "line",
    "kind",
    "name",
    "card",
    "meter",
    "group",
    "start",
    "end",
    "quantity",
    "model",
    "steps",
    "amount",
    "currency",
    "references",
    "creditGrant",
)
EXPORT_COLUMNS = (
    "invoice",
    "status",
    "voidReason",
    "replaces",
    "customer",
    "customerName",
    "subscription",
    "issuedAt",
    "periodStart",
    "periodEnd",
    "currency",
    "invoiceTotal",
    "amountDue",
    "line",
    "kind",
    "name",
    "meter",
    "group",
    "quantity",
    "amount",
    "references",
)


@dataclass(frozen=True, slots=True)
class Status:
    """Beside an invoice (never in it): voided or not, why, and by what it was replaced."""

    status: str = "finalized"
    void_reason: str | None = None
    replaced_by: str | None = None


def step_text(step: Step) -> str:
    """One breakdown step for people: ``tier 2: 900 x 0.10 + 10 = 100``."""
    if step.kind == "tier":
        fee = f" + {step.flat_fee}" if step.flat_fee else ""
        return f"tier {step.tier}: {step.units} x {step.unit_price}{fee} = {step.amount}"
    if step.kind == "unit":
        return f"{step.units} x {step.unit_price} = {step.amount}"
    if step.kind == "package":
        return f"{step.blocks} packages of {step.units} units x {step.unit_price} = {step.amount}"
    if step.kind == "allowance":
        return f"free allowance: {step.units} units"
    if step.kind in ("minimum", "maximum"):
        return f"line {step.kind} {step.flat_fee}: {step.amount:+}"
    if step.kind == "flat":
        return f"flat fee {step.flat_fee}"
    if step.kind == "proration":
        return f"prorated for the part of the period covered: {step.amount:+}"
    if step.kind == "charged":
        return f"already charged by the other lines: {step.amount}"
    return f"{step.kind}: {step.amount}"


def _group(line: InvoiceLine) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted((line.group or {}).items()))


def _time(t: datetime | None) -> str:
    return "" if t is None else timestamp(t)


def _plain(d: Decimal | None) -> str:
    return "" if d is None else str(d)


def invoice_csv(invoice: Invoice) -> str:
    """Every line and credit of one invoice, one CSV row each."""
    out = io.StringIO()
    writer = csvsafe.writer(out)
    writer.writerow(LINE_COLUMNS)
    for i, line in enumerate((*invoice.lines, *invoice.credits), start=1):
        steps = "; ".join(step_text(s) for s in line.steps)
        writer.writerow(
            [
                invoice.number,
                i,
                line.kind,
                line.name,
                line.card or "",
                line.meter or "",
                _group(line),
                _time(line.start),
                _time(line.end),
                _plain(line.quantity),
                line.model or "",
                steps,
                line.amount,
                invoice.currency,
                line.references or "",
                line.credit_grant or "",
            ]
        )
    return out.getvalue()


def export_csv(invoices: Iterable[tuple[Invoice, Status]]) -> str:
    """An accounting export: one row per invoice line, with the invoice's header on each row."""
    out = io.StringIO()
    writer = csvsafe.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    for inv, st in invoices:
        head = [
            inv.number,
            st.status,
            st.void_reason or "",
            inv.replaces or "",
            inv.customer,
            inv.customer_name or "",
            inv.subscription,
            _time(inv.issued_at),
            _time(inv.period_start),
            _time(inv.period_end),
            inv.currency,
            inv.total,
            inv.amount_due,
        ]
        for i, line in enumerate((*inv.lines, *inv.credits), start=1):
            writer.writerow(
                [
                    *head,
                    i,
                    line.kind,
                    line.name,
                    line.meter or "",
                    _group(line),
                    _plain(line.quantity),
                    line.amount,
                    line.references or "",
                ]
            )
    return out.getvalue()


@cache
def _env() -> Environment:
    return Environment(
        loader=PackageLoader("meterline.domain.billing", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def invoice_html(invoice: Invoice, status: Status | None = None, locale: str = "en_US") -> str:
    """The printable invoice page: every line, the period, subtotal, credits and totals."""
    st = status or Status()

    def money(amount: Decimal) -> str:
        # Babel rounds in the thread's decimal context (28 digits by default): an amount with
        # more digits than that (a large quantity at a large price) needs the exact context.
        with decimal.localcontext(EXACT):
            return str(format_currency(amount, invoice.currency, locale=locale))

    def day(t: datetime) -> str:
        return str(format_date(t.date(), format="medium", locale=locale))

    def last_day(t: datetime) -> str:
        return day(t - timedelta(microseconds=1))

    def number(q: Decimal) -> str:
        with decimal.localcontext(EXACT):
            return str(format_decimal(q, locale=locale, decimal_quantization=False))

    return (
        _env()
        .get_template("invoice.html")
        .render(
            inv=invoice,
            status=st.status,
            void_reason=st.void_reason,
            replaced_by=st.replaced_by,
            lang=locale.split("_")[0],
            money=money,
            day=day,
            last_day=last_day,
            number=number,
            step_text=step_text,
        )
    )
