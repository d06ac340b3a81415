"""Finalized invoices: the immutable document a billing run stores, and how it is assembled.

An :class:`Invoice` is built once, encoded once (``msgspec.json.encode``) and those exact bytes
are what storage keeps and every reader gets back; nothing ever re-encodes or edits it. A void
is recorded beside the invoice, and a replacement is a new invoice whose ``replaces`` names
the voided one.

Sums, in the order they are formed (none is rounded again; every line already is):

* ``subtotal``: the lines of this invoice's own windows (flat, usage, minimum commitment);
* ``adjustments``: the ``adjustment`` lines for late usage of earlier invoices;
* ``total`` = the sum of every entry in ``lines`` = ``subtotal + adjustments``;
* ``credits``: the (negative) credit lines, burned against ``total`` when it is positive;
* ``amount_due`` = ``total`` + the credit lines. A negative amount due is owed to the customer.

Each window keeps the usage it was priced with (``windows[].usage``), so a later run can price
late usage of that window against exactly what was billed (``billing.adjust``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import msgspec

from meterline.domain.billing.adjustments import Adjustment
from meterline.domain.billing.credits import CreditGrant, CreditResult, apply_credits
from meterline.domain.billing.lines import InvoiceDraft, InvoiceLine, UsageKey
from meterline.domain.billing.money import sub, total
from meterline.domain.periods import Period


class UsageEntry(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """One usage figure a window was priced with: a meter's total, or one group value's."""

    meter: str
    quantity: Decimal
    group: dict[str, str] | None = None


class InvoiceWindow(msgspec.Struct, frozen=True, rename="camel"):
    """A priced window: plan version, the clipped window, its full period, and the usage read."""

    plan: str
    version: int
    start: datetime
    end: datetime
    period_start: datetime
    period_end: datetime
    usage: tuple[UsageEntry, ...]

    @property
    def window(self) -> Period:
        return Period(self.start, self.end)

    @property
    def period(self) -> Period:
        return Period(self.period_start, self.period_end)


class Invoice(msgspec.Struct, frozen=True, rename="camel"):
    """A finalized invoice. Never changed after it is stored."""

    number: str
    customer: str
    customer_name: str | None
    subscription: str
    currency: str
    period_start: datetime
    period_end: datetime
    issued_at: datetime
    lines: tuple[InvoiceLine, ...]
    credits: tuple[InvoiceLine, ...]
    subtotal: Decimal
    adjustments: Decimal
    total: Decimal
    amount_due: Decimal
    windows: tuple[InvoiceWindow, ...]
    replaces: str | None = None


@dataclass(frozen=True, slots=True)
class Parties:
    """Who and what an invoice is for."""

    customer: str
    customer_name: str | None
    subscription: str
    period: Period
    replaces: str | None = None


def usage_entries(usage: Mapping[UsageKey, Decimal]) -> tuple[UsageEntry, ...]:
    """``usage`` as entries in a stable order (meter, then group)."""
    keys = sorted(usage, key=lambda k: (k[0], k[1] is not None, k[1] or ()))
    return tuple(UsageEntry(m, usage[(m, g)], dict(g) if g is not None else None) for m, g in keys)


def usage_map(entries: Sequence[UsageEntry]) -> dict[UsageKey, Decimal]:
    """The inverse of :func:`usage_entries`."""
    return {(e.meter, tuple(sorted(e.group.items())) if e.group is not None else None): e.quantity for e in entries}


def invoice_window(draft: InvoiceDraft, period: Period, usage: Mapping[UsageKey, Decimal]) -> InvoiceWindow:
    """The record of one priced window."""
    return InvoiceWindow(
        draft.plan, draft.version, draft.start, draft.end, period.start, period.end, usage_entries(usage)
    )


def number_text(prefix: str, n: int, digits: int) -> str:
    """The invoice number ``n`` of a namespace: ``number_text("INV-", 7, 6) == "INV-000007"``."""
    return f"{prefix}{n:0{digits}d}"


def assemble(
    number: str,
    parties: Parties,
    windows: Sequence[tuple[InvoiceDraft, InvoiceWindow]],
    adjustments: Sequence[Adjustment],
    grants: Sequence[CreditGrant],
    issued_at: datetime,
) -> tuple[Invoice, CreditResult]:
    """The finalized invoice (credits burned at ``issued_at``) and the grants' balances after."""
    currency = windows[0][0].currency
    own = tuple(line for draft, _ in windows for line in draft.lines)
    late = tuple(line for adj in adjustments for line in adj.lines)
    subtotal, adjusted = total(line.amount for line in own), total(line.amount for line in late)
    grand = total(line.amount for line in own + late)
    usable = [g for g in grants if g.currency == currency]
    burned = apply_credits(grand, usable, issued_at, currency_code=currency)
    invoice = Invoice(
        number=number,
        customer=parties.customer,
        customer_name=parties.customer_name,
        subscription=parties.subscription,
        currency=currency,
        period_start=parties.period.start,
        period_end=parties.period.end,
        issued_at=issued_at,
        lines=own + late,
        credits=burned.lines,
        subtotal=subtotal,
        adjustments=adjusted,
        total=grand,
        amount_due=sub(grand, burned.applied),
        windows=tuple(w for _, w in windows),
        replaces=parties.replaces,
    )
    return invoice, burned


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Invoice)


def encode_invoice(invoice: Invoice) -> bytes:
    """The one encoding of an invoice; storage keeps these bytes and serves them unchanged."""
    return _encoder.encode(invoice)


def decode_invoice(body: bytes) -> Invoice:
    return _decoder.decode(body)


def timestamp(t: datetime) -> str:
    """A time of an invoice written exactly as its stored JSON writes it (RFC 3339, ``Z`` for UTC),
    so every view of an invoice (list, status, exports) shows the same text for the same time."""
    return str(msgspec.to_builtins(t))
