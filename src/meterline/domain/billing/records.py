"""What the billing services and their stores hand each other: stored subscriptions, invoice
records, billed-window snapshots, invoices ready to finalize and the report of a run.

These are nouns of the billing domain, not rows of one database: every store of the billing
ports (``meterline.ports.billing_*``) speaks in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import msgspec

from meterline.domain.billing.adjustments import Adjustment
from meterline.domain.billing.credits import GrantTerms
from meterline.domain.billing.documents import InvoiceWindow, Parties
from meterline.domain.billing.lines import InvoiceDraft
from meterline.domain.billing.subscriptions import Subscription
from meterline.domain.clock import to_us


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Billing-run settings (from ``[billing]`` in the config)."""

    prefix: str = "INV-"
    digits: int = 6
    grace_us: int = 0
    lookback_us: int = 90 * 86_400_000_000
    chunk: int = 500
    """Invoices finalized per transaction."""


class StoredSubscription(msgspec.Struct, frozen=True):
    """A subscription with its identity and how far it is invoiced."""

    id: str
    namespace: str
    customer_id: str
    subscription: Subscription
    billed_through_us: int
    previous: str | None
    created_us: int

    @property
    def open(self) -> bool:
        """A window is left to invoice (it has no end, or is invoiced short of it)."""
        end = self.subscription.end
        return end is None or self.billed_through_us < to_us(end)


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
    snapshot_us: int = 0
    """When that snapshot was taken (the issue time of the invoice that wrote it): corrections
    received later are what an adjustment of the window cites."""


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
class Snapshot:
    """A window an invoice bills, as stored beside it; ``origin_id`` None: this invoice itself."""

    subscription: str
    window: InvoiceWindow
    origin_id: int | None


@dataclass(frozen=True, slots=True)
class NewInvoice:
    """Everything a finalized invoice writes, together: its bytes, the windows it bills, the
    credits it burns and how far its subscription is invoiced now."""

    namespace: str
    number: str
    customer_id: str
    subscription: str
    period_start_us: int
    period_end_us: int
    replaces: str
    issued_us: int
    body: bytes
    snapshots: tuple[Snapshot, ...]
    burns: tuple[tuple[str, Decimal], ...]
    """(grant key, amount burned) per credit line."""
    billed_through_us: int | None


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


@dataclass(frozen=True, slots=True)
class Outcome:
    """What finalizing one pending invoice did: ``created``, ``exists`` or ``stale``."""

    status: str
    number: str | None


@dataclass(frozen=True, slots=True)
class RunFailure:
    subscription: str
    customer: str
    period_start_us: int
    code: str
    detail: str


@dataclass
class RunReport:
    at_us: int
    cutoff_us: int
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    stale: int = 0
    failed: list[RunFailure] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GrantBalance:
    """A live credit grant, what is left of it, and whether it expired."""

    terms: GrantTerms
    balance: Decimal
    expired: bool


@dataclass(frozen=True, slots=True)
class CreditBalances:
    """A customer's credits: usable totals per currency and every live grant."""

    totals: dict[str, Decimal]
    grants: list[GrantBalance]


@dataclass(frozen=True, slots=True)
class UsageAsk:
    """What one priced window needs: the customer's subjects, the window, the plan's queries
    (``(meter, None)`` for a total, ``(meter, dimension)`` for a total per group value)."""

    subjects: tuple[str, ...]
    start_us: int
    end_us: int
    queries: tuple[tuple[str, str | None], ...]
