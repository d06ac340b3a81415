"""Top-K: the K subjects (or values of one group-by dimension) with the largest usage of a
meter over a period, ranked from the exact answer of one meter query split by that dimension.

The ranking is exact for every aggregation (each candidate's value is the meter's exact value
over the period); ``total`` and ``rest`` are given where values add up (SUM and COUNT).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from meterline.domain.decimals import add
from meterline.domain.errors import InvalidInput
from meterline.domain.meters.model import Aggregation
from meterline.domain.meters.query import SUBJECT, Row

MAX_K = 1000
"""Most entries one top-K answer ranks."""

ADDITIVE = (Aggregation.SUM, Aggregation.COUNT)


@dataclass(frozen=True, slots=True)
class Ranked:
    rank: int
    key: str | None
    """The subject or the dimension's value (None: usage without a value for the dimension)."""
    value: Decimal


@dataclass(frozen=True, slots=True)
class Top:
    by: str
    k: int
    items: list[Ranked]
    candidates: int
    """How many subjects or values had usage in the period."""
    total: Decimal | None
    """SUM and COUNT: the meter's total over the period (all candidates); else None."""
    rest: Decimal | None
    """SUM and COUNT: the total of the candidates outside the top K; else None."""


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}", code="invalid_parameter")
    return k


def rank(rows: Iterable[Row], by: str, k: int, aggregation: Aggregation) -> Top:
    """The ``k`` largest of ``rows`` (one per candidate: a query split by ``by`` alone, one
    window), largest first; ties by key (a missing value last). ``O(n log k)``."""
    keyed = [(_key(row, by), row.value) for row in rows]
    best = heapq.nsmallest(k, keyed, key=lambda kv: (-kv[1], kv[0] is None, kv[0] or ""))
    items = [Ranked(i + 1, key, value) for i, (key, value) in enumerate(best)]
    total = rest = None
    if aggregation in ADDITIVE:
        total = Decimal(0)
        for _, value in keyed:
            total = add(total, value)
        top = Decimal(0)
        for item in items:
            top = add(top, item.value)
        rest = add(total, -top)
    return Top(by, k, items, len(keyed), total, rest)


def _key(row: Row, by: str) -> str | None:
    return row.subject if by == SUBJECT else row.group_by.get(by)


@dataclass(frozen=True, slots=True)
class OwnerRanks:
    """A meter's usage over one range as the executive view ranks it (``services.insights``):
    the largest users (values that add up: per customer, its subjects' values added; others:
    per subject) and who used the meter at all."""

    top: list[tuple[str, Decimal]]
    """(customer key or subject, value), largest first, ties by name; of the ``limit`` first,
    those with a value of 0 left out."""
    owned: int
    """Customers one of whose subjects has a value other than 0."""
    unowned: frozenset[str]
    """Subjects with a value other than 0 that no customer claims."""
    customers: int
    """The namespace's live customers."""
