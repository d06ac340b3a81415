"""Rows of the billing tables as typed values, and what a billing run hands to storage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from meterline.domain.billing import Adjustment, InvoiceDraft, Subscription
from meterline.domain.billing.credits import GrantTerms
from meterline.domain.billing.documents import InvoiceWindow, Parties

GrantInput = GrantTerms
_sub = msgspec.json.Decoder(Subscription)
_window = msgspec.json.Decoder(InvoiceWindow)
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Settings:
    """Billing-run settings (from ``[billing]`` in the config)."""

    prefix: str = "INV-"
    digits: int = 6
    grace_us: int = 0
    lookback_us: int = 90 * 86_400_000_000
    chunk: int = 500


class StoredSubscription(msgspec.Struct, frozen=True):
    """A subscription with its identity and how far it is invoiced."""

    id: str
    namespace: str
    customer_id: str
    subscription: Subscription
    billed_through_us: int
    previous: str | None
    created_us: int


def subscription_row(s: StoredSubscription) -> tuple[Any, ...]:
    """Values for ``id, namespace, customer, body, billed_through_us, previous, created_us``."""
    return (s.id, s.namespace, s.customer_id, _encode(s.subscription), s.billed_through_us, s.previous, s.created_us)


def load_subscription(row: tuple[Any, ...]) -> StoredSubscription:
    id_, namespace, customer, body, billed, previous, created = row
    return StoredSubscription(id_, namespace, customer, _sub.decode(body), billed, previous, created)


@dataclass(frozen=True, slots=True)
class Billed:
    """The latest snapshot of an invoiced window: what it was billed for, by which invoice."""

    id: int
    customer_id: str
    subscription: str
    window_start_us: int
    origin_id: int
    origin_number: str
    window: InvoiceWindow
    current: InvoiceWindow
    """The same window with the usage known now (set when an adjustment is computed)."""


def load_billed(row: tuple[Any, ...]) -> Billed:
    id_, customer, subscription, start_us, origin, number, body = row
    window = _window.decode(body)
    return Billed(id_, customer, subscription, start_us, origin, number, window, window)


@dataclass(frozen=True, slots=True)
class Pending:
    """An invoice ready to finalize: priced windows, adjustments, and where billing moves to."""

    namespace: str
    customer_id: str
    parties: Parties
    windows: tuple[tuple[InvoiceDraft, InvoiceWindow], ...]
    adjustments: tuple[tuple[Adjustment, Billed], ...]
    issued_at: datetime
    billed_through_us: int | None

    @property
    def window_key(self) -> int:
        return self.parties.period.start_us


@dataclass(frozen=True, slots=True)
class InvoiceRecord:
    """A stored invoice: its exact bytes and, beside them, whether it was voided."""

    number: str
    customer_id: str
    subscription: str
    period_start_us: int
    period_end_us: int
    issued_us: int
    replaces: str
    body: bytes
    void_reason: str | None
    voided_us: int | None
    replaced_by: str | None

    @property
    def status(self) -> str:
        return "finalized" if self.voided_us is None else "voided"
