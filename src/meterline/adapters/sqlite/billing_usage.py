"""Usage for billing windows, read from the rollups in as few queries as possible.

A billing run asks for many (customer subjects, window, meter, group-by) figures. Asks that
share a window and meter are answered together: for SUM and COUNT meters, one rollup read
folded per subject in SQL (and per group when a dimension is priced) serves every customer,
and each customer's figure is the exact sum over its subjects. Other aggregations (MAX,
LATEST, UNIQUE_COUNT, ...) do not add up across subjects, so each customer gets its own query
that merges its subjects.
Answers are exact Decimals; windows must fall on whole minutes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from zoneinfo import ZoneInfo

from meterline.adapters.sqlite.customers import SqliteCustomers
from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.meters import SqliteMeters, query_rows
from meterline.adapters.sqlite.rollups import read_states
from meterline.domain.billing import UsageKey
from meterline.domain.billing.money import add
from meterline.domain.billing.records import UsageAsk
from meterline.domain.customers.model import Customer
from meterline.domain.meters.model import Aggregation, Meter
from meterline.domain.meters.query import SUBJECT, MeterQuery, Row, group_values
from meterline.domain.meters.windows import bucket_size

ADDITIVE = (Aggregation.SUM, Aggregation.COUNT)
FILTER_LIMIT = 500
"""Up to this many subjects are filtered in SQL; beyond it the meter's subjects are scanned."""
_UTC = ZoneInfo("UTC")


class SqlitePeriodUsage:
    """``PeriodUsage`` over the rollup tables, read as they are today (see ``read_usage``)."""

    def __init__(self, db: Database, now_us: Callable[[], int]) -> None:
        self._db = db
        self._now_us = now_us

    def usage(self, meters: Mapping[str, Meter], asks: Sequence[UsageAsk]) -> list[dict[UsageKey, Decimal]]:
        self._db.fresh()  # usage as of the ledger now (waits, bounded, for the aggregator)
        return read_usage(self._db.reader(), meters, asks, self._now_us())


class SqliteBillingDirectory:
    """``BillingDirectory``: the customers and meters of the catalog, read for billing."""

    def __init__(self, db: Database, customers: SqliteCustomers, meters: SqliteMeters) -> None:
        self._db = db
        self._customers = customers
        self._meters = meters

    def customer(self, namespace: str, key: str) -> Customer:
        return self._customers.get(namespace, key)

    def customers(self, namespace: str) -> dict[str, Customer]:
        return load_customers(self._db.reader(), namespace)

    def meters(self, namespace: str) -> list[Meter]:
        return self._meters.list(namespace)


def load_customers(conn: sqlite3.Connection, namespace: str) -> dict[str, Customer]:
    """Every live customer of ``namespace`` with its subjects, in two queries."""
    subjects: dict[str, list[str]] = {}
    for subject, cid in conn.execute(
        "SELECT subject, customer FROM customer_subjects WHERE namespace = ? ORDER BY subject", (namespace,)
    ):
        subjects.setdefault(cid, []).append(subject)
    rows = conn.execute(
        "SELECT id, key, name, timezone, created_us, updated_us FROM customers"
        " WHERE namespace = ? AND deleted_us IS NULL",
        (namespace,),
    )
    return {
        cid: Customer(cid, namespace, key, name, tuple(subjects.get(cid, ())), tz, None, created, updated)
        for cid, key, name, tz, created, updated in rows
    }


def read_usage(
    conn: sqlite3.Connection, meters: Mapping[str, Meter], asks: Sequence[UsageAsk], now_us: int
) -> list[dict[UsageKey, Decimal]]:
    """One usage mapping per ask (``(meter, None)`` totals and ``(meter, ((dim, value),))``)."""
    out: list[dict[UsageKey, Decimal]] = [{} for _ in asks]
    batches: dict[tuple[int, int, str, str | None], list[int]] = {}
    for i, ask in enumerate(asks):
        for slug, dim in ask.queries:
            batches.setdefault((ask.start_us, ask.end_us, slug, dim), []).append(i)
    for (start, end, slug, dim), members in batches.items():
        meter = meters[slug]
        if meter.spec.aggregation in ADDITIVE:
            _batched(conn, meter, dim, start, end, [(i, asks[i]) for i in members], out, now_us)
        else:
            for i in members:
                _single(conn, meter, dim, start, end, asks[i], out[i], now_us)
    return out


def _batched(
    conn: sqlite3.Connection,
    meter: Meter,
    dim: str | None,
    start: int,
    end: int,
    members: list[tuple[int, UsageAsk]],
    out: list[dict[UsageKey, Decimal]],
    now_us: int,
) -> None:
    owners: dict[str, list[int]] = {}
    for i, ask in members:
        for subject in ask.subjects:
            owners.setdefault(subject, []).append(i)
        _zeros(out[i], meter.slug, dim)
    subjects = tuple(sorted(owners)) if len(owners) <= FILTER_LIMIT else ()
    bounds = (start // 1_000_000, end // 1_000_000)
    position = tuple(sorted(meter.spec.group_by)).index(dim) if dim is not None else -1
    count = meter.spec.aggregation is Aggregation.COUNT
    states = read_states(
        conn, meter.spec.aggregation, bounds, bucket_size(bounds), meter.key, subjects, by_group=dim is not None
    )
    for state in states:
        value = Decimal(state.count) if count else state.total
        if value is None:
            continue
        key: UsageKey = (meter.slug, None) if dim is None else (meter.slug, ((dim, _value(state.group_key, position)),))
        for i in owners.get(state.subject, ()):
            out[i][key] = add(out[i].get(key, Decimal(0)), value)


def _value(group_key: str, position: int) -> str:
    return group_values(group_key)[position] or ""


def _single(
    conn: sqlite3.Connection,
    meter: Meter,
    dim: str | None,
    start: int,
    end: int,
    ask: UsageAsk,
    out: dict[UsageKey, Decimal],
    now_us: int,
) -> None:
    _zeros(out, meter.slug, dim)
    query = MeterQuery(
        start // 1_000_000,
        end // 1_000_000,
        None,
        _UTC,
        group_by=() if dim is None else (dim,),
        filters=((SUBJECT, ask.subjects, False),),
    )
    for row in query_rows(conn, meter, query, now_us):
        out[_key(meter.slug, dim, row)] = row.value


def _zeros(usage: dict[UsageKey, Decimal], meter: str, dim: str | None) -> None:
    if dim is None:
        usage.setdefault((meter, None), Decimal(0))


def _key(meter: str, dim: str | None, row: Row) -> UsageKey:
    if dim is None:
        return (meter, None)
    return (meter, ((dim, row.group_by.get(dim) or ""),))
