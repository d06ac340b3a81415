"""Usage ranked per customer by SQLite: the executive view's top customers and feature adoption.

The executive view ranks every meter's usage over its range: per subject (one window, the
rows of a meter query split by subject), attributed to the customer that claims the subject,
added up per customer (SUM, COUNT), the largest ten kept, and counted: how many customers
(and unclaimed subjects) used the meter. With 10,000 customers, turning each subject's folded
state into Python objects, then ranking and counting them, cost more than SQLite's reading
them (about 4 us per subject and meter, and listing the customers for their claims).

:meth:`SqliteRanking.rank` folds the same row sets with the same statement
(``per_subject.fold_statement``: the sets ``meters.subject_sets`` chooses, with the same
subtraction, skipping and reads by time) and lets SQLite attribute, add up, rank and count in
that statement: Python gets the top rows, a count and the unclaimed subjects with usage.
Attribution is ``services.insights``'s: the live customer keyed by the subject, else the live
customer claiming it as a subject key, else nobody (the subject counts as its own customer).

Exactness: integral values are folded and added natively (SQLite raises on an overflow);
a meter where some subject's value is not integral (decimal text), or which no statement of
this kind answers (LATEST, UNIQUE_COUNT, AVG, gauges, partial minutes, ranges without a whole
UTC day), is answered None: the caller ranks the meter query's rows in Python as before.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Collection
from decimal import Decimal

from meterline.adapters.sqlite import meters as sqlite_meters
from meterline.adapters.sqlite import per_subject
from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.rollups import first_bucket
from meterline.adapters.sqlite.summaries import has_day, plan, with_months
from meterline.domain.meters.edges import inner_bounds
from meterline.domain.meters.model import Aggregation, Meter
from meterline.domain.meters.query import SUBJECT, MeterQuery, query_grid
from meterline.domain.meters.top import OwnerRanks

_VALUE = {
    Aggregation.COUNT: ("c", "NULL"),
    Aggregation.SUM: ("total_n", "total_x"),
    Aggregation.MIN: ("low_n", "low_x"),
    Aggregation.MAX: ("high_n", "high_x"),
}
"""Each ranked aggregation's value in a folded row: its native (integral) and exact columns."""
ADDED = frozenset({Aggregation.COUNT, Aggregation.SUM})
"""Aggregations ranked per customer (values added up); the others are ranked per subject."""

_RANKED = """
WITH f(subject, w, c, total_n, total_x, low_n, low_x, high_n, high_x) AS MATERIALIZED ({fold}),
v AS MATERIALIZED (
  SELECT subject, coalesce(
      (SELECT key FROM customers WHERE namespace = ? AND key = f.subject AND deleted_us IS NULL),
      (SELECT c.key FROM customer_subjects AS s JOIN customers AS c ON c.id = s.customer
        WHERE s.namespace = ? AND s.subject = f.subject AND c.deleted_us IS NULL)
    ) AS owner, {native} AS n, {exact} IS NOT NULL OR {native} IS NULL AS odd
  FROM f WHERE c > 0
)
SELECT 'top', who, n FROM (
  SELECT {who} AS who, sum(n) AS n FROM v GROUP BY who ORDER BY n DESC, who LIMIT ?
) WHERE n <> 0
UNION ALL SELECT 'owned', NULL, count(DISTINCT owner) FROM v WHERE n <> 0 AND owner IS NOT NULL
UNION ALL SELECT 'unowned', subject, NULL FROM v WHERE n <> 0 AND owner IS NULL
UNION ALL SELECT 'odd', NULL, count(*) FROM v WHERE odd
UNION ALL SELECT 'customers', NULL, count(*) FROM customers WHERE namespace = ? AND deleted_us IS NULL
"""
"""One statement: the folded rows per subject (``f``), each subject's owner and value
(``v``, subjects whose subtracted count came to 0 left out, as ``fold_subjects`` does), then
the ranking (the ``limit`` first, ties by name, then the zeros dropped: ``Insights``'s order),
the customers and unclaimed subjects with usage, the values it cannot add exactly, and the
namespace's live customers."""
MAX_IDS = 500
"""Customer ids per lookup of :meth:`SqliteRanking.keys`."""


class SqliteRanking:
    """``ports.meters.UsageRanking`` over the embedded store."""

    def __init__(self, db: Database, now_us: Callable[[], int]) -> None:
        self._db = db
        self._now_us = now_us

    def rank(self, meter: Meter, query: MeterQuery, limit: int) -> OwnerRanks | None:
        self._db.fresh()
        sqlite_meters.settled(self._db, meter)
        return ranked(self._db.reader(), meter, query, limit, self._now_us())

    def keys(self, namespace: str, ids: Collection[str]) -> dict[str, str]:
        conn, wanted = self._db.reader(), sorted(ids)
        out: dict[str, str] = {}
        for i in range(0, len(wanted), MAX_IDS):
            chunk = wanted[i : i + MAX_IDS]
            sql = (
                "SELECT id, key FROM customers WHERE namespace = ? AND deleted_us IS NULL"
                f" AND id IN ({','.join('?' * len(chunk))})"
            )
            out.update(conn.execute(sql, (namespace, *chunk)).fetchall())
        return out


def ranked(conn: sqlite3.Connection, meter: Meter, query: MeterQuery, limit: int, now_us: int) -> OwnerRanks | None:
    """:meth:`SqliteRanking.rank` on ``conn`` (a reader)."""
    aggregation = meter.spec.aggregation
    if aggregation not in _VALUE or query.filters or query.subjects or query.group_by != (SUBJECT,):
        return None
    bounds = query_grid(query, now_us, lambda: first_bucket(conn, meter.key))
    if not bounds:
        return None
    inner = inner_bounds(query, bounds)
    segments = plan(inner)
    if inner != bounds or len(inner) != 2 or segments is None or not has_day(segments):
        return None
    sets = sqlite_meters.subject_sets(conn, meter, inner, with_months(segments))
    if not sets or len(sets) > per_subject.MAX_PARTS:
        return _nobody(conn, meter.namespace) if not sets else None
    fold, params = per_subject.fold_statement(conn, aggregation, meter.key, sets)
    native, exact = _VALUE[aggregation]
    who = "coalesce(owner, subject)" if aggregation in ADDED else "subject"
    sql = _RANKED.format(fold=fold, native=native, exact=exact, who=who)
    try:
        rows = conn.execute(sql, (*params, meter.namespace, meter.namespace, limit, meter.namespace)).fetchall()
    except sqlite3.OperationalError as exc:
        if "overflow" not in str(exc):
            raise
        return None  # a native sum past 2**63: the caller adds exactly
    return _ranks(rows)


def _ranks(rows: builtins.list[tuple[str, str | None, int | None]]) -> OwnerRanks | None:
    top: builtins.list[tuple[str, Decimal]] = []
    unowned: set[str] = set()
    counts: dict[str, int] = {}
    for kind, name, n in rows:
        if kind == "top":
            top.append((str(name), Decimal(int(n or 0))))
        elif kind == "unowned":
            unowned.add(str(name))
        else:
            counts[kind] = int(n or 0)
    if counts["odd"]:
        return None  # a fractional value (or none at all): ranked exactly by the caller
    return OwnerRanks(top, counts["owned"], frozenset(unowned), counts["customers"])


def _nobody(conn: sqlite3.Connection, namespace: str) -> OwnerRanks:
    """No row set holds usage in the range."""
    sql = "SELECT count(*) FROM customers WHERE namespace = ? AND deleted_us IS NULL"
    (customers,) = conn.execute(sql, (namespace,)).fetchone()
    return OwnerRanks([], 0, frozenset(), int(customers))
