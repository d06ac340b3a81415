"""Exact quantities: the one place that decides how numbers are read, added and written.

A quantity is read only in the JSON number grammar (RFC 8259: ``-?(0|[1-9][0-9]*)(.[0-9]+)?
([eE][+-]?[0-9]+)?``, ASCII digits), whether it arrives as a JSON number or inside a string:
``"1_000"``, ``"٣"`` (Arabic-Indic), full-width digits, ``" 7 "``, ``"+3"``, ``".5"``, ``"NaN"`` and ``"Infinity"`` are
not numbers here, although Python's ``Decimal`` reads them all.

Quantities are ``Decimal`` end to end. Additions use a context wide enough to be exact for
every value we accept (at most ``MAX_DIGITS`` significant digits, exponent within
``MAX_EXPONENT``), so a sum does not depend on the order events arrive in; that is what lets
``rebuild`` reproduce rollups bit for bit. Only AVG divides, and it rounds to ``AVG_DIGITS``
significant digits, half-even.
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal

MAX_DIGITS = 38
MAX_EXPONENT = 30
AVG_DIGITS = 28
MAX_TEXT = 100
"""Longest quantity accepted as text (ample for 38 digits, a sign, a point and an exponent)."""
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)

EXACT = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[decimal.InvalidOperation]
)
AVERAGE = decimal.Context(prec=AVG_DIGITS, rounding=decimal.ROUND_HALF_EVEN)


_INT_BOUND = 10**MAX_DIGITS
"""Integers strictly within ±10**MAX_DIGITS have at most MAX_DIGITS digits and exponent 0."""


class NotAQuantity(ValueError):
    """The value is not a finite decimal number within the accepted range."""


def to_quantity(value: object) -> Decimal:
    """Read a JSON number or numeric string as an exact Decimal, or raise NotAQuantity."""
    if type(value) is int and -_INT_BOUND < value < _INT_BOUND:
        return Decimal(value)  # the common case: a whole JSON number of at most MAX_DIGITS digits
    if isinstance(value, bool):
        raise NotAQuantity("a boolean is not a number")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, str):
        if len(value) > MAX_TEXT or not JSON_NUMBER.fullmatch(value):
            raise NotAQuantity(f"{value[:40]!r} is not a number (write it as a JSON number, e.g. 1000 or 2.5)")
        d = Decimal(value)
    elif isinstance(value, float):
        d = Decimal(repr(value))
    else:
        raise NotAQuantity(f"a JSON {_json_kind(value)} is not a number")
    if not d.is_finite():
        raise NotAQuantity("the value is not finite")
    _, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    if len(digits) > MAX_DIGITS or abs(exponent) > MAX_EXPONENT:
        raise NotAQuantity(f"the value has more than {MAX_DIGITS} digits or an exponent beyond ±{MAX_EXPONENT}")
    return d


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def add(a: Decimal, b: Decimal) -> Decimal:
    return EXACT.add(a, b)


def average(total: Decimal, count: int) -> Decimal:
    return AVERAGE.divide(total, Decimal(count))


def canonical(d: Decimal) -> str:
    """Plain notation without exponent or trailing zeros: ``1E+3`` -> ``1000``, ``1.50`` -> ``1.5``."""
    if d == 0:
        return "0"
    text = format(d.normalize(EXACT), "f")
    return text


STORED_INT_LIMIT = 2**62


def stored(d: Decimal) -> int | str:
    """How rollups store a quantity: an integer when it is whole and below 2**62 in magnitude
    (so SQLite can add two of them natively without overflow), else canonical text. The form
    depends only on the value, never on how it was summed, so a rebuild reproduces it exactly."""
    whole = int(d)  # towards zero: equal to d exactly when d is whole
    if whole == d and -STORED_INT_LIMIT < whole < STORED_INT_LIMIT:
        return whole
    return canonical(d)


def in_stored_form(d: Decimal) -> Decimal:
    """``d`` as rollups hold it (:func:`stored`): equal, with no trailing zeros or exponent, so
    a sum reads the same however many partial sums it was merged from."""
    return Decimal(stored(d))
