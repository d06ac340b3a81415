"""Prepaid credits: grants burn down against an invoice total, in a fixed order.

Order: lower ``priority`` first; among equal priorities the grant that expires first (a grant
without expiry comes last); then the earlier ``effective_at``; then ``key``, so the order is
total. A grant is usable at ``at`` when ``effective_at <= at`` and ``at < expires_at``; others are
skipped and keep their balance. Credits never take the amount due below zero. Balances are whole
minor units of the invoice currency, so no rounding happens here.

JSON shape of a grant (camelCase):

    {"key": "promo_2025", "currency": "USD", "balance": "50.00", "priority": 1,
     "effectiveAt": "2025-01-01T00:00:00Z", "expiresAt": "2026-01-01T00:00:00Z"}
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import msgspec

from meterline.domain.billing.lines import InvoiceDraft, InvoiceLine
from meterline.domain.billing.money import ZERO, Currency, currency, in_minor_units, sub, total
from meterline.domain.clock import to_us
from meterline.domain.errors import CurrencyMismatch, InvalidInput, MeterlineError
from meterline.domain.identifiers import SLUG_RULE, is_slug

NO_EXPIRY = 2**63


class CreditGrant(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """A prepaid credit and its remaining ``balance``."""

    key: str
    currency: str
    balance: Decimal
    effective_at: datetime
    priority: int = 0
    expires_at: datetime | None = None

    def usable(self, at: datetime) -> bool:
        """Effective at ``at`` and not yet expired."""
        expired = self.expires_at is not None and to_us(self.expires_at) <= to_us(at)
        return to_us(self.effective_at) <= to_us(at) and not expired and self.balance > 0


class CreditResult(msgspec.Struct, frozen=True, rename="camel"):
    """The credit lines (negative amounts, in burn order) and every grant's balance after."""

    lines: tuple[InvoiceLine, ...]
    balances: dict[str, Decimal]
    applied: Decimal
    remaining: Decimal


def burn_order(grants: Sequence[CreditGrant]) -> list[CreditGrant]:
    """Grants in the order they are consumed."""
    return sorted(grants, key=_order)


def _order(grant: CreditGrant) -> tuple[int, int, int, str]:
    expiry = NO_EXPIRY if grant.expires_at is None else to_us(grant.expires_at)
    return grant.priority, expiry, to_us(grant.effective_at), grant.key


def apply_credits(amount: Decimal, grants: Sequence[CreditGrant], at: datetime, *, currency_code: str) -> CreditResult:
    """Burn ``grants`` against ``amount`` (an invoice total) at instant ``at``."""
    cur = currency(currency_code)
    _check_grants(grants, cur)
    balances = {grant.key: grant.balance for grant in grants}
    lines: list[InvoiceLine] = []
    remaining = max(amount, ZERO)
    for grant in burn_order(grants):
        if remaining <= 0:
            break
        if grant.usable(at):
            used = min(grant.balance, remaining)
            remaining, balances[grant.key] = sub(remaining, used), sub(grant.balance, used)
            lines.append(_line(grant, used))
    applied = total(-line.amount for line in lines)
    return CreditResult(tuple(lines), balances, applied, remaining)


def credit_invoice(
    draft: InvoiceDraft, grants: Sequence[CreditGrant], at: datetime
) -> tuple[InvoiceDraft, CreditResult]:
    """``draft`` with credit lines and the reduced ``amount_due``, and the burn result."""
    result = apply_credits(draft.amount_due, grants, at, currency_code=draft.currency)
    credited = msgspec.structs.replace(
        draft, credits=draft.credits + result.lines, amount_due=sub(draft.amount_due, result.applied)
    )
    return credited, result


def _line(grant: CreditGrant, used: Decimal) -> InvoiceLine:
    amount = sub(ZERO, used)
    return InvoiceLine("credit", f"Credit {grant.key}", amount, amount, credit_grant=grant.key)


def _check_grants(grants: Sequence[CreditGrant], cur: Currency) -> None:
    problems: list[str] = []
    for grant in grants:
        if grant.currency != cur.code:
            raise CurrencyMismatch(f"credit grant {grant.key!r} is in {grant.currency}, the invoice in {cur.code}")
        if not in_minor_units(grant.balance, cur) or grant.balance < 0:
            problems.append(f"grant {grant.key!r}: balance must be a non-negative amount in whole {cur.code} units")
    if len({grant.key for grant in grants}) != len(grants):
        problems.append("grant keys must be unique")
    if problems:
        raise InvalidInput(
            "Invalid credit grants: " + "; ".join(problems), code="invalid_credit_grant", problems=problems
        )


class GrantTerms(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """A prepaid credit as granted: the original ``amount``; its balance is what burns left of it.

    ``effectiveAt`` defaults to the moment it is granted; no ``expiresAt`` means it never expires.
    """

    key: str
    currency: str
    amount: Decimal
    effective_at: datetime | None = None
    priority: int = 0
    expires_at: datetime | None = None


def grant_problems(terms: GrantTerms) -> list[str]:
    """Every problem with a grant's terms (empty when valid)."""
    problems = [] if is_slug(terms.key) else [f"key must be {SLUG_RULE}"]
    try:
        cur = currency(terms.currency)
    except MeterlineError as exc:
        return [*problems, exc.detail]
    if not terms.amount.is_finite() or terms.amount <= 0 or not in_minor_units(terms.amount, cur):
        problems.append(f"amount must be a positive amount in whole {cur.code} minor units")
    for name, t in (("effectiveAt", terms.effective_at), ("expiresAt", terms.expires_at)):
        if t is not None and t.utcoffset() is None:
            problems.append(f"{name} must carry a UTC offset")
    if not problems and terms.effective_at and terms.expires_at and terms.expires_at <= terms.effective_at:
        problems.append("expiresAt must be after effectiveAt")
    return problems
