"""Finalized invoices, voids and billed-window snapshots in memory, and the finalizing unit of
work (one :meth:`MemoryBillingState.write`: all of it is kept, or none)."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection
from decimal import Decimal
from typing import TypeVar

import msgspec

from meterline.adapters.memory.billing import (
    Burn,
    MemoryBillingState,
    StoredInvoice,
    StoredSnapshot,
    Tables,
    Void,
    balances,
)
from meterline.domain.billing.credits import GrantTerms
from meterline.domain.billing.records import Billed, InvoiceRecord, NewInvoice
from meterline.domain.errors import Conflict, NotFound
from meterline.ports.billing_invoices import InvoiceTransaction

T = TypeVar("T")


class MemoryInvoices:
    def __init__(self, state: MemoryBillingState) -> None:
        self._state = state

    def get(self, namespace: str, number: str) -> InvoiceRecord:
        return self._state.read(lambda t: _record(t, _invoice(t, namespace, number)))

    def list(
        self,
        namespace: str,
        *,
        customer_id: str | None = None,
        period_from_us: int | None = None,
        period_to_us: int | None = None,
    ) -> builtins.list[InvoiceRecord]:
        def read(t: Tables) -> builtins.list[InvoiceRecord]:
            return [
                _record(t, i)
                for i in t.invoices
                if i.namespace == namespace
                and (customer_id is None or i.customer_id == customer_id)
                and (period_from_us is None or i.period_start_us >= period_from_us)
                and (period_to_us is None or i.period_start_us < period_to_us)
            ]

        return self._state.read(read)

    def billed(self, namespace: str, customer_ids: Collection[str], since_us: int) -> dict[str, builtins.list[Billed]]:
        def read(t: Tables) -> dict[str, builtins.list[Billed]]:
            latest: dict[tuple[str, int], Billed] = {}
            for s in t.snapshots:
                if s.namespace == namespace and s.end_us > since_us and s.customer_id in customer_ids and _live(t, s):
                    number = t.invoices[s.origin - 1].number
                    latest[(s.subscription, s.start_us)] = Billed(
                        s.id, s.customer_id, s.subscription, s.start_us, s.origin, number, s.window, s.window
                    )
            out: dict[str, builtins.list[Billed]] = {}
            for b in latest.values():
                out.setdefault(b.customer_id, []).append(b)
            return out

        return self._state.read(read)

    def first_billed(
        self, namespace: str, customer_id: str, subscription: str, after_us: int, until_us: int
    ) -> builtins.list[str]:
        def read(t: Tables) -> builtins.list[str]:
            found = [
                s.invoice
                for s in t.snapshots
                if (s.namespace, s.customer_id, s.subscription) == (namespace, customer_id, subscription)
                and s.invoice == s.origin
                and after_us < s.end_us <= until_us
                and s.invoice not in t.voids
            ]
            return [t.invoices[i - 1].number for i in sorted(found)]

        return self._state.read(read)

    def void(self, namespace: str, number: str, reason: str, at_us: int) -> None:
        def write(t: Tables) -> None:
            invoice = _invoice(t, namespace, number)
            if invoice.id in t.voids:
                raise Conflict(f"invoice {number!r} is already void", code="invoice_voided")
            t.voids[invoice.id] = Void(reason, at_us, None)
            burned = [b for b in t.burns if b.invoice == invoice.id]
            t.burns += [Burn(namespace, invoice.customer_id, b.grant, invoice.id, -b.amount) for b in burned]

        self._state.write(write)


class MemoryInvoiceUnitOfWork:
    def __init__(self, state: MemoryBillingState) -> None:
        self._state = state

    def run(self, work: Callable[[InvoiceTransaction], T]) -> T:
        return self._state.write(lambda t: work(_Transaction(t)))


class _Transaction:
    def __init__(self, tables: Tables) -> None:
        self._t = tables

    def invoice_for(self, subscription: str, period_start_us: int, replaces: str) -> str | None:
        for i in self._t.invoices:
            if (i.subscription, i.period_start_us, i.replaces) == (subscription, period_start_us, replaces):
                return i.number
        return None

    def latest_snapshot(self, subscription: str, window_start_us: int) -> int | None:
        ids = [
            s.id
            for s in self._t.snapshots
            if (s.subscription, s.start_us) == (subscription, window_start_us) and _live(self._t, s)
        ]
        return max(ids, default=None)

    def billed_through(self, subscription: str) -> int | None:
        found = self._t.subscriptions.get(subscription)
        return None if found is None else found.billed_through_us

    def next_number(self, namespace: str) -> int:
        self._t.numbers[namespace] = n = self._t.numbers.get(namespace, 0) + 1
        return n

    def balances(self, namespace: str, customer_id: str) -> builtins.list[tuple[GrantTerms, Decimal]]:
        return balances(self._t, namespace, customer_id)

    def period_invoices(self, subscription: str, period_start_us: int) -> builtins.list[str]:
        return [
            i.number for i in self._t.invoices if (i.subscription, i.period_start_us) == (subscription, period_start_us)
        ]

    def live_after(self, namespace: str, customer_id: str, number: str) -> builtins.list[tuple[str, bytes]]:
        first = _invoice(self._t, namespace, number).id
        return [
            (i.number, i.body)
            for i in self._t.invoices
            if (i.namespace, i.customer_id) == (namespace, customer_id) and i.id > first and i.id not in self._t.voids
        ]

    def store(self, inv: NewInvoice) -> None:
        t = self._t
        if any((i.namespace, i.number) == (inv.namespace, inv.number) for i in t.invoices):
            raise Conflict(f"invoice {inv.number!r} already exists", code="invoice_exists")
        invoice_id = len(t.invoices) + 1
        t.invoices.append(
            StoredInvoice(
                invoice_id,
                inv.namespace,
                inv.number,
                inv.customer_id,
                inv.subscription,
                inv.period_start_us,
                inv.period_end_us,
                inv.replaces,
                inv.issued_us,
                inv.body,
            )
        )
        for s in inv.snapshots:
            origin = invoice_id if s.origin_id is None else s.origin_id
            w = s.window.window
            t.snapshots.append(
                StoredSnapshot(
                    len(t.snapshots) + 1,
                    inv.namespace,
                    inv.customer_id,
                    s.subscription,
                    w.start_us,
                    w.end_us,
                    invoice_id,
                    origin,
                    s.window,
                )
            )
        t.burns += [Burn(inv.namespace, inv.customer_id, key, invoice_id, amount) for key, amount in inv.burns]
        self._advance(inv)

    def _advance(self, inv: NewInvoice) -> None:
        t = self._t
        sub = t.subscriptions.get(inv.subscription)
        if inv.billed_through_us is not None and sub is not None and sub.billed_through_us < inv.billed_through_us:
            t.subscriptions[sub.id] = msgspec.structs.replace(sub, billed_through_us=inv.billed_through_us)
        if inv.replaces:
            replaced = _invoice(t, inv.namespace, inv.replaces)
            void = t.voids.get(replaced.id)
            if void is not None:
                t.voids[replaced.id] = Void(void.reason, void.voided_us, inv.number)


def _invoice(t: Tables, namespace: str, number: str) -> StoredInvoice:
    for i in t.invoices:
        if (i.namespace, i.number) == (namespace, number):
            return i
    raise NotFound(f"no invoice {number!r}", code="invoice_not_found")


def _live(t: Tables, s: StoredSnapshot) -> bool:
    return s.invoice not in t.voids and s.origin not in t.voids


def _record(t: Tables, i: StoredInvoice) -> InvoiceRecord:
    void = t.voids.get(i.id)
    return InvoiceRecord(
        i.number,
        i.customer_id,
        i.subscription,
        i.period_start_us,
        i.period_end_us,
        i.issued_us,
        i.replaces,
        i.body,
        None if void is None else void.reason,
        None if void is None else void.voided_us,
        None if void is None else void.replaced_by,
    )
