"""Money: currencies, exact arithmetic, and the one rounding rule of billing.

The rule, in full:

1. A currency is an ISO 4217 code; its minor units come from Babel (CLDR):
   JPY 0, USD/EUR 2, BHD/KWD 3. Unknown codes raise ``UnknownCurrency``.
2. Prices (unit prices, package prices, flat fees, minimums) may carry up to
   ``MAX_PRICE_PLACES`` (12) decimal places, more than the currency has. Quantities are exact.
3. Everything before rounding is exact: products and sums use a context with unbounded
   precision, so ``10**15`` units at ``0.000001`` is exactly ``1000000000``. The only division
   (prorating a flat fee by ``covered / period`` time) runs at ``DIVISION_DIGITS`` (80)
   significant digits, far past any half-way case that can arise from a fraction of two
   microsecond counts.
4. Each invoice LINE amount is rounded ONCE, to the currency's minor units, with
   ``ROUND_HALF_EVEN`` (banker's rounding: ties go to the even digit, so over many lines the
   rounding error averages out instead of drifting up). :func:`round_line` is the only place in
   billing that rounds money.
5. Subtotals and totals are sums of rounded line amounts and are never rounded again. Credit
   grant balances are whole minor units, so credits need no rounding either.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from decimal import Decimal
from functools import cache

import msgspec
from babel.numbers import get_currency_precision, list_currencies

from meterline.domain.errors import UnknownCurrency

MAX_PRICE_PLACES = 12
DIVISION_DIGITS = 80
ZERO = Decimal(0)

_EXACT = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[decimal.InvalidOperation]
)
_DIVIDE = decimal.Context(prec=DIVISION_DIGITS, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation])
ROUNDING = decimal.ROUND_HALF_EVEN


class Currency(msgspec.Struct, frozen=True):
    """An ISO 4217 currency and how many minor digits its amounts carry."""

    code: str
    minor_units: int

    @property
    def quantum(self) -> Decimal:
        """The smallest amount: ``Decimal('0.01')`` for USD, ``Decimal('1')`` for JPY."""
        return Decimal(1).scaleb(-self.minor_units)


@cache
def known_currencies() -> frozenset[str]:
    """Every ISO 4217 code a plan, grant or invoice may use."""
    return frozenset(list_currencies())


def is_currency(code: str) -> bool:
    return code in known_currencies()


@cache
def currency(code: str) -> Currency:
    """The currency for an upper-case ISO 4217 code, or raise ``UnknownCurrency``."""
    if not is_currency(code):
        raise UnknownCurrency(f"{code!r} is not an ISO 4217 currency code (e.g. USD, EUR, JPY)")
    return Currency(code, int(get_currency_precision(code)))


def mul(a: Decimal, b: Decimal) -> Decimal:
    """Exact product."""
    return _EXACT.multiply(a, b)


def add(a: Decimal, b: Decimal) -> Decimal:
    """Exact sum."""
    return _EXACT.add(a, b)


def sub(a: Decimal, b: Decimal) -> Decimal:
    """Exact difference."""
    return _EXACT.subtract(a, b)


def total(amounts: Iterable[Decimal]) -> Decimal:
    """Exact sum of many amounts (``0`` when there are none)."""
    result = ZERO
    for amount in amounts:
        result = _EXACT.add(result, amount)
    return result


def blocks(quantity: Decimal, size: Decimal) -> Decimal:
    """Whole blocks of ``size`` needed for ``quantity``: partial blocks count as one, 0 -> 0."""
    whole, rest = _EXACT.divmod(quantity, size)
    return _EXACT.add(whole, 1) if rest else whole


def prorate(amount: Decimal, covered: int, whole: int) -> Decimal:
    """``amount * covered / whole``: multiplied exactly, then divided once at 80 digits."""
    if covered == whole:
        return amount
    return _DIVIDE.divide(_EXACT.multiply(amount, Decimal(covered)), Decimal(whole))


def per(quantity: Decimal, size: Decimal) -> Decimal:
    """``quantity`` in units of ``size`` (a rate card's ``unitSize``): exact when the quotient
    terminates within 80 digits, else divided once at 80 digits, like proration."""
    return _DIVIDE.divide(quantity, size)


def round_line(amount: Decimal, cur: Currency) -> Decimal:
    """THE rounding rule: one line amount to the currency's minor units, half-even."""
    return amount.quantize(cur.quantum, rounding=ROUNDING, context=_EXACT)


def places(amount: Decimal) -> int:
    """Decimal places ``amount`` needs (``1.50`` -> 1, ``1E+3`` -> 0)."""
    exponent = amount.normalize(_EXACT).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def in_minor_units(amount: Decimal, cur: Currency) -> bool:
    """Whether ``amount`` is a whole number of the currency's minor units."""
    return amount.is_finite() and amount == round_line(amount, cur)


def allocate(amount: Decimal, weights: list[Decimal], cur: Currency) -> list[Decimal]:
    """Split a rounded ``amount`` into whole minor units in proportion to ``weights``.

    Largest remainder: every part is first rounded down, then the leftover minor units go one by
    one to the parts with the largest remainders (ties: the earlier part), so the parts always
    add up to ``amount`` exactly. Used by showback reports; invoices never allocate. All weights
    zero (or none positive) gives everything to the first part.
    """
    if not weights:
        return []
    units = int(abs(amount).scaleb(cur.minor_units, context=_EXACT))
    whole = total(w for w in weights if w > 0)
    if whole <= 0:
        return [amount, *[ZERO] * (len(weights) - 1)]
    shares = [_DIVIDE.divide(_EXACT.multiply(Decimal(units), max(w, ZERO)), whole) for w in weights]
    floors = [int(s) for s in shares]
    order = sorted(range(len(weights)), key=lambda i: (-(shares[i] - floors[i]), i))
    for i in order[: units - sum(floors)]:
        floors[i] += 1
    sign = -1 if amount < 0 else 1
    return [_EXACT.multiply(Decimal(sign * f), cur.quantum) for f in floors]
