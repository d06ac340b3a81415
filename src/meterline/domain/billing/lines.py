"""Invoice nouns: lines, drafts, the proration fraction, and the usage keys pricing reads.

Every line is traceable: which rate card, meter and group value it prices, over which window,
how many units, with which charge model, and the breakdown (``steps``) that produced its exact
amount; ``amount`` is that exact amount rounded once (``money.round_line``). All types are msgspec
Structs, so ``msgspec.json.encode`` gives the storage/API form directly.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

import msgspec

from meterline.domain.billing.charges import Step

Group = tuple[tuple[str, str], ...]
"""Group values of a usage row as sorted ``(dimension, value)`` pairs, e.g. ``(("region", "eu"),)``."""

UsageKey = tuple[str, Group | None]
"""``(meter slug, group)``; ``group`` is None for the meter's total over the window."""

LineKind = Literal["flat", "usage", "unpriced", "minimum_commitment", "credit", "adjustment"]


def group_key(dimension: str, value: str) -> Group:
    """The usage group for one dimension value: ``group_key("region", "eu")``."""
    return ((dimension, value),)


class Proration(msgspec.Struct, frozen=True, rename="camel"):
    """The part of a billing period a window covers, as exact elapsed microseconds."""

    covered_us: int
    period_us: int

    @property
    def full(self) -> bool:
        return self.covered_us == self.period_us


class InvoiceLine(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """One invoice line. ``amount`` has the currency's minor digits; ``exact_amount`` is the
    value before the single rounding (credits and adjustments are already whole minor units)."""

    kind: LineKind
    name: str
    amount: Decimal
    exact_amount: Decimal
    start: datetime | None = None
    end: datetime | None = None
    card: str | None = None
    meter: str | None = None
    group: dict[str, str] | None = None
    model: str | None = None
    quantity: Decimal | None = None
    steps: tuple[Step, ...] = ()
    proration: Proration | None = None
    references: str | None = None
    credit_grant: str | None = None
    corrections: tuple[int, ...] = ()
    """For an adjustment: the corrections (their ledger seqs) that changed this usage since
    it was invoiced, if any (late events are not corrections and are not listed)."""

    @property
    def match_key(self) -> tuple[str, str | None, tuple[tuple[str, str], ...]]:
        """What identifies the line within one window: kind family, card and group."""
        family = "usage" if self.kind == "unpriced" else self.kind
        return family, self.card, tuple(sorted((self.group or {}).items()))


class InvoiceDraft(msgspec.Struct, frozen=True, rename="camel"):
    """The priced content of one plan version over one (possibly clipped) window.

    ``subtotal`` sums the flat and usage lines; ``total`` sums every line in ``lines`` (the
    minimum-commitment true-up included); ``amount_due`` is ``total`` plus the (negative) credit
    lines. None of these sums is ever rounded again. ``unpriced`` names usage that no price
    covered; such a draft should not be finalized.
    """

    plan: str
    version: int
    currency: str
    start: datetime
    end: datetime
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal
    total: Decimal
    amount_due: Decimal
    credits: tuple[InvoiceLine, ...] = ()
    unpriced: tuple[str, ...] = ()
