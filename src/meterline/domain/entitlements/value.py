"""Entitlement values and verdicts.

A metered entitlement's balance, overage and grant total come from the credit engine
(``domain.entitlements.credit``, run by ``services.entitlement_balances``); then::

    hasAccess = unlimited or soft limit (overage allowed) or balance > 0

"Would N more units be allowed?" is ``N <= balance`` for a hard limit (``balance > 0`` for 0).
"""

from __future__ import annotations

from decimal import Context, Decimal

import msgspec

from meterline.domain.decimals import EXACT
from meterline.domain.entitlements.model import Entitlement
from meterline.domain.periods import Period

ZERO = Decimal(0)
_PROJECTION = Context(prec=40)  # a projection is an estimate; 40 digits, then 6 decimal places

NO_ENTITLEMENT = "no_entitlement"
NO_ACCESS = "no_access"
LIMIT_EXHAUSTED = "limit_exhausted"


class Value(msgspec.Struct, frozen=True, gc=False):
    """An entitlement's state at one instant (a Struct: built on every check, so cheap to make)."""

    has_access: bool
    usage: Decimal | None = None
    allowance: Decimal | None = None
    balance: Decimal | None = None
    overage: Decimal | None = None
    soft_limit_exceeded: bool = False
    projected_usage: Decimal | None = None
    period: Period | None = None
    config: str | None = None
    carried: Decimal = ZERO
    """Overage carried into this period from the one before (``preserveOverageAtReset``): it
    uses the allowance before this period's usage does."""


class Verdict(msgspec.Struct, frozen=True, gc=False):
    allowed: bool
    denial: str | None
    value: Value


def projection(usage: Decimal, period: Period, now_us: int) -> Decimal:
    """End-of-period usage if the rate so far continues (linear in elapsed time)."""
    elapsed = min(max(now_us - period.start_us, 0), period.end_us - period.start_us)
    if elapsed <= 0:
        return usage
    length = period.end_us - period.start_us
    projected = _PROJECTION.divide(EXACT.multiply(usage, Decimal(length)), Decimal(elapsed))
    return projected.quantize(Decimal("0.000001"), context=EXACT).normalize(EXACT)


def verdict(ent: Entitlement | None, value: Value | None, quantity: Decimal) -> Verdict:
    """Would ``quantity`` more units be allowed now?"""
    if ent is None or value is None:
        return Verdict(False, NO_ENTITLEMENT, value or Value(False))
    if ent.spec.type != "metered":
        return Verdict(value.has_access, None if value.has_access else NO_ACCESS, value)
    spec = ent.spec
    if spec.is_unlimited or spec.is_soft_limit:
        return Verdict(True, None, value)
    assert value.balance is not None
    room = quantity <= value.balance if quantity > 0 else value.balance > 0
    return Verdict(room, None if room else LIMIT_EXHAUSTED, value)
