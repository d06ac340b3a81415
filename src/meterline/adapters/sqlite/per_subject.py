"""Per-subject usage over long ranges, folded by SQLite in one statement.

A query per subject over months (top customers, feature adoption, a meter query grouped by
subject) is covered by :func:`summaries.plan` with the subjects' month rows, day rows and, at
a zone's ragged edges, hour and quarter-hour rollups: several row sets per subject. Reading
each set into Python and merging there costs a Python object per subject and set, and an
exact-decimal Python aggregate call per row; with thousands of customers that was most of
the executive view's time.

:func:`fold_subjects` reads every set in one compound statement instead: each set folded per
subject in its index order (no sort), then the sets folded per subject and window, with
SQLite's own integer ``sum``/``min``/``max`` for integral values (stored as integers below
2**62: ``domain.decimals.stored``) and the exact decimal aggregates of ``schema.py`` only for
the others. Python then sees one state per subject and window. The values are the same as
merging the sets' states one by one (exact sums, and minima/maxima of the same stored values),
so every answer stays what it was. A native sum that would overflow makes SQLite raise; the
caller then reads the sets one by one as before.

LATEST (a state per row) is not folded here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal

from meterline.domain.decimals import add
from meterline.domain.meters.model import Aggregation
from meterline.domain.meters.query import BucketState

Part = tuple[str, int, int, int, int]
"""One row set: (table, level, first bucket, last bucket (excluded), window tag)."""

_KEPT = {
    Aggregation.COUNT: (),
    Aggregation.SUM: ("total",),
    Aggregation.AVG: ("total",),
    Aggregation.MIN: ("low",),
    Aggregation.MAX: ("high",),
}
"""The stored columns each aggregation folds besides the count."""
FOLDED = frozenset(_KEPT)
"""The aggregations :func:`fold_subjects` answers."""
_FUNCTIONS = {"total": ("sum", "dec_sum"), "low": ("min", "dec_least"), "high": ("max", "dec_greatest")}
_OUTER = (
    "SELECT subject, w, sum(c), sum(total_n), dec_sum(total_x) FILTER (WHERE total_x IS NOT NULL),"
    " min(low_n), dec_least(low_x) FILTER (WHERE low_x IS NOT NULL),"
    " max(high_n), dec_greatest(high_x) FILTER (WHERE high_x IS NOT NULL)"
    " FROM ({parts}) GROUP BY subject, w"
)
MAX_PARTS = 200
"""Row sets per statement (SQLite allows 500 terms in a compound SELECT)."""
MAX_PARAMETERS = 30_000
"""Bound parameters per statement (SQLite allows 32,766)."""


def _columns(aggregation: Aggregation) -> str:
    """A row set's folded columns, named for the outer fold: per stored column its integral
    values summed (or compared) natively and the others exactly; NULL where not kept."""
    out = []
    for col, (native, exact) in _FUNCTIONS.items():
        if col in _KEPT[aggregation]:
            out.append(f"{native}({col}) FILTER (WHERE typeof({col}) = 'integer') AS {col}_n")
            out.append(f"{exact}({col}) FILTER (WHERE typeof({col}) <> 'integer') AS {col}_x")
        else:
            out.append(f"NULL AS {col}_n, NULL AS {col}_x")
    return ", ".join(out)


def fold_subjects(
    conn: sqlite3.Connection,
    aggregation: Aggregation,
    meter: int,
    parts: Sequence[Part],
    subjects: tuple[str, ...] = (),
) -> list[BucketState] | None:
    """One state per subject (every subject of the meter, or only ``subjects``) and window
    tag (the state's ``bucket``) folded from ``parts``; None when a native sum overflowed."""
    size = max(1, min(MAX_PARTS, MAX_PARAMETERS // (5 + len(subjects))))
    out: list[BucketState] = []
    try:
        for i in range(0, len(parts), size):
            out += map(_state, _fold(conn, aggregation, meter, parts[i : i + size], subjects))
    except sqlite3.OperationalError as exc:
        if "overflow" not in str(exc):
            raise
        return None
    return out


def _fold(
    conn: sqlite3.Connection,
    aggregation: Aggregation,
    meter: int,
    parts: Sequence[Part],
    subjects: tuple[str, ...],
) -> Iterable[tuple[object, ...]]:
    # Subject-first keys: each set is one index range per subject, read in subject order.
    which = ",".join("?" * len(subjects)) if subjects else "SELECT subject FROM meter_subjects WHERE meter = ?"
    chosen: tuple[object, ...] = subjects or (meter,)
    columns = _columns(aggregation)
    terms, params = [], []
    for table, level, first, last, tag in parts:
        terms.append(
            f"SELECT subject, ? AS w, sum(cnt) AS c, {columns} FROM {table} WHERE meter = ? AND level = ?"
            f" AND subject IN ({which}) AND bucket >= ? AND bucket < ? GROUP BY subject"
        )
        params += [tag, meter, level, *chosen, first, last]
    if len(terms) == 1:  # one set: already one row per subject
        return conn.execute(terms[0], params).fetchall()
    return conn.execute(_OUTER.format(parts=" UNION ALL ".join(terms)), params).fetchall()


def _state(row: tuple[object, ...]) -> BucketState:
    subject, w, count, total_n, total_x, low_n, low_x, high_n, high_x = row
    total = _exact(total_n, total_x, add)
    low, high = _exact(low_n, low_x, min), _exact(high_n, high_x, max)
    return BucketState(subject, "[]", w, count, total, low, high, None)  # type: ignore[arg-type]


def _exact(native: object, exact: object, join: Callable[[Decimal, Decimal], Decimal]) -> Decimal | None:
    """The natively folded (integral) and the exactly folded values of a column as one."""
    if exact is None:
        return None if native is None else Decimal(native)  # type: ignore[arg-type]
    if native is None:
        return Decimal(exact)  # type: ignore[arg-type]
    return join(Decimal(native), Decimal(exact))  # type: ignore[arg-type]
