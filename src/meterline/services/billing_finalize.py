"""Finalizing invoices: the rules of one finalizing transaction (see ``ports.billing_invoices``).

For each pending invoice, in order, inside one :class:`InvoiceTransaction`:

1. skip it if its (subscription, period, replaces) key has an invoice (a re-run changes nothing);
2. skip it if an adjustment it carries was computed from a snapshot that is no longer the
   latest, or if an earlier window of its subscription is not finalized yet (another run got
   there first; the next run recomputes);
3. take the namespace's next number (gap-free: the number commits with the invoice or not at all);
4. burn credits, then store the invoice bytes, its window snapshots and burns, and move the
   subscription's ``billed_through`` -- all in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from meterline.domain.billing import Adjustment, CreditGrant
from meterline.domain.billing.adjustments import reversal
from meterline.domain.billing.credits import GrantTerms
from meterline.domain.billing.documents import assemble, decode_invoice, encode_invoice, number_text
from meterline.domain.billing.money import ZERO
from meterline.domain.billing.records import NewInvoice, Outcome, Pending, RunSettings, Snapshot
from meterline.domain.clock import from_us, to_us
from meterline.ports.billing_invoices import InvoiceTransaction, InvoiceUnitOfWork

_EPOCH = from_us(0)


def finalize(uow: InvoiceUnitOfWork, items: Sequence[Pending], settings: RunSettings) -> list[Outcome]:
    """Finalize ``items`` in one transaction (see the module docstring)."""
    return uow.run(lambda tx: [_one(tx, item, settings) for item in items])


def _one(tx: InvoiceTransaction, item: Pending, settings: RunSettings) -> Outcome:
    subscription, replaces = item.parties.subscription, item.parties.replaces or ""
    existing = tx.invoice_for(subscription, item.window_key, replaces)
    if existing is not None:
        return Outcome("exists", existing)
    if any(tx.latest_snapshot(b.subscription, b.window_start_us) != b.id for _, b in item.adjustments):
        return Outcome("stale", None)
    if item.billed_through_us is not None and tx.billed_through(subscription) != item.windows[0][1].window.start_us:
        return Outcome("stale", None)  # an earlier window of this subscription is not finalized
    number = number_text(settings.prefix, tx.next_number(item.namespace), settings.digits)
    adjustments = [a for a, _ in item.adjustments] + _charged_elsewhere(tx, item)
    grants = _grants(tx, item.namespace, item.customer_id)
    invoice, _ = assemble(number, item.parties, item.windows, adjustments, grants, item.issued_at)
    snapshots = [Snapshot(subscription, w, None) for _, w in item.windows]
    snapshots += [Snapshot(b.subscription, b.current, b.origin_id) for _, b in item.adjustments]
    tx.store(
        NewInvoice(
            item.namespace,
            number,
            item.customer_id,
            subscription,
            item.window_key,
            item.parties.period.end_us,
            replaces,
            to_us(invoice.issued_at),  # the stored invoice's own time, never a second reading
            encode_invoice(invoice),
            tuple(snapshots),
            tuple((str(line.credit_grant), -line.amount) for line in invoice.credits),
            item.billed_through_us,
        )
    )
    return Outcome("created", number)


def _charged_elsewhere(tx: InvoiceTransaction, item: Pending) -> list[Adjustment]:
    """For a replacement: the adjustment lines live invoices charged against any earlier invoice
    of its period, taken back (``billing.adjustments.reversal``); the replacement prices the
    period in full."""
    if not item.parties.replaces:
        return []
    chain = tx.period_invoices(item.parties.subscription, item.window_key)
    if not chain:
        return []
    numbers = set(chain)
    out = []
    for number, body in tx.live_after(item.namespace, item.customer_id, chain[0]):
        lines = [ln for ln in decode_invoice(body).lines if ln.kind == "adjustment" and ln.references in numbers]
        if lines:
            out.append(reversal(lines, number))
    return out


def _grants(tx: InvoiceTransaction, namespace: str, customer_id: str) -> list[CreditGrant]:
    return grants_of(tx.balances(namespace, customer_id))


def grants_of(balances: Sequence[tuple[GrantTerms, Decimal]]) -> list[CreditGrant]:
    """The grants a new invoice may burn: every live grant with something left."""
    return [
        CreditGrant(g.key, g.currency, balance, g.effective_at or _EPOCH, g.priority, g.expires_at)
        for g, balance in balances
        if balance > ZERO
    ]
