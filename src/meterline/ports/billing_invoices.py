"""Where finalized invoices are kept: their exact bytes, voids, and the windows each billed.

Finalizing is a unit of work (:class:`InvoiceUnitOfWork`): the billing service reads and
writes through one :class:`InvoiceTransaction`, and everything it wrote (invoice, number,
window snapshots, credit burns, the subscription's ``billed_through``) commits together or not
at all. A stored invoice is never changed; a void is recorded beside it.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection
from decimal import Decimal
from typing import Protocol, TypeVar

from meterline.domain.billing.credits import GrantTerms
from meterline.domain.billing.records import Billed, InvoiceRecord, NewInvoice

T = TypeVar("T")


class InvoiceStore(Protocol):
    def get(self, namespace: str, number: str) -> InvoiceRecord:
        """``NotFound`` ``invoice_not_found`` when there is no such invoice."""
        ...

    def list(
        self,
        namespace: str,
        *,
        customer_id: str | None = None,
        period_from_us: int | None = None,
        period_to_us: int | None = None,
    ) -> builtins.list[InvoiceRecord]:
        """Invoices whose period starts in ``[period_from_us, period_to_us)``, oldest first."""
        ...

    def billed(self, namespace: str, customer_ids: Collection[str], since_us: int) -> dict[str, builtins.list[Billed]]:
        """Per customer, the latest live snapshot of every billed window ending after ``since_us``
        (live: neither the snapshot's invoice nor its origin is void)."""
        ...

    def first_billed(
        self, namespace: str, customer_id: str, subscription: str, after_us: int, until_us: int
    ) -> builtins.list[str]:
        """The live invoices that first billed a window of the customer's ``subscription`` ending in
        ``(after_us, until_us]``, oldest first."""
        ...

    def void(self, namespace: str, number: str, reason: str, at_us: int) -> None:
        """Record ``number`` void and give back the credits it burned, together.
        ``NotFound`` ``invoice_not_found``; ``Conflict`` ``invoice_voided`` when already void."""
        ...


class InvoiceTransaction(Protocol):
    """Reads and writes of one finalizing transaction; each read sees the writes before it."""

    def invoice_for(self, subscription: str, period_start_us: int, replaces: str) -> str | None:
        """The number of the invoice of that (subscription, period, replaced invoice), if any."""
        ...

    def latest_snapshot(self, subscription: str, window_start_us: int) -> int | None:
        """The id of the latest live snapshot of that window."""
        ...

    def billed_through(self, subscription: str) -> int | None:
        """How far ``subscription`` is invoiced (None: no such subscription)."""
        ...

    def next_number(self, namespace: str) -> int:
        """The namespace's next invoice number (1, 2, ...: gap-free, as it commits or not)."""
        ...

    def balances(self, namespace: str, customer_id: str) -> builtins.list[tuple[GrantTerms, Decimal]]:
        """Every live credit grant of the customer with its balance, ordered by key."""
        ...

    def period_invoices(self, subscription: str, period_start_us: int) -> builtins.list[str]:
        """Every invoice (void or not) of that subscription period, oldest first."""
        ...

    def live_after(self, namespace: str, customer_id: str, number: str) -> builtins.list[tuple[str, bytes]]:
        """The customer's live invoices finalized after ``number``: (number, stored bytes)."""
        ...

    def store(self, invoice: NewInvoice) -> None:
        """Write a finalized invoice with its snapshots and burns; move its subscription's
        ``billed_through`` forward (never back); mark the invoice it replaces as replaced."""
        ...


class InvoiceUnitOfWork(Protocol):
    def run(self, work: Callable[[InvoiceTransaction], T]) -> T:
        """Run ``work`` in one transaction: all its writes commit together, or none when it raises."""
        ...
