"""Billing stores in SQLite: plan versions and subscriptions (invoices and credits:
``billing_invoices``; usage and the directory: ``billing_usage``), and :func:`billing_stores`
that builds them all over one database.

Writes are writer tasks: the check a service hands a write (a draft is still a draft, a
customer's subscriptions do not overlap) runs in the same transaction as the write it guards.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from meterline.adapters.sqlite.billing_invoices import SqliteCredits, SqliteInvoices, SqliteInvoiceUnitOfWork
from meterline.adapters.sqlite.billing_usage import SqliteBillingDirectory, SqlitePeriodUsage
from meterline.adapters.sqlite.customers import SqliteCustomers
from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.meters import SqliteMeters
from meterline.domain.billing import PlanVersion, Subscription
from meterline.domain.billing.records import StoredSubscription
from meterline.domain.clock import to_us
from meterline.domain.errors import Conflict, NotFound
from meterline.ports.billing import BillingStores
from meterline.ports.billing_subscriptions import Change
from meterline.ports.corrections import CorrectionLog

T = TypeVar("T")
_plan = msgspec.json.Decoder(PlanVersion)
_sub = msgspec.json.Decoder(Subscription)
_encode = msgspec.json.Encoder().encode
_SUB = "id, namespace, customer, body, billed_through_us, previous, created_us"
_OPEN = "billed_through_us < coalesce(end_us, 1 << 62)"


def billing_stores(
    db: Database,
    customers: SqliteCustomers,
    meters: SqliteMeters,
    now_us: Callable[[], int],
    corrections: CorrectionLog | None = None,
) -> BillingStores:
    """Every billing store over ``db``."""
    return BillingStores(
        plans=SqlitePlans(db, now_us),
        subscriptions=SqliteSubscriptions(db),
        invoices=SqliteInvoices(db),
        finalizing=SqliteInvoiceUnitOfWork(db),
        credits=SqliteCredits(db),
        usage=SqlitePeriodUsage(db, now_us),
        directory=SqliteBillingDirectory(db, customers, meters),
        corrections=corrections,
    )


class SqlitePlans:
    def __init__(self, db: Database, now_us: Callable[[], int]) -> None:
        self._db = db
        self._now_us = now_us

    def add(self, namespace: str, plan: str, build: Callable[[int], PlanVersion]) -> PlanVersion:
        def task(conn: sqlite3.Connection) -> PlanVersion:
            latest = conn.execute(
                "SELECT coalesce(max(version), 0) FROM plan_versions WHERE namespace = ? AND plan = ?",
                (namespace, plan),
            ).fetchone()[0]
            stored = build(int(latest))
            now = self._now_us()
            try:
                conn.execute(
                    "INSERT INTO plan_versions VALUES (?,?,?,?,?,?,?)",
                    (namespace, stored.plan, stored.version, stored.status.value, _encode(stored), now, now),
                )
            except sqlite3.IntegrityError:
                raise Conflict(
                    f"plan {stored.plan!r} version {stored.version} already exists", code="plan_version_exists"
                ) from None
            return stored

        return self._db.writer.call(task)

    def update(
        self, namespace: str, plan: str, version: int, change: Callable[[PlanVersion], PlanVersion]
    ) -> PlanVersion:
        def task(conn: sqlite3.Connection) -> PlanVersion:
            updated = change(_get_plan(conn, namespace, plan, version))
            conn.execute(
                "UPDATE plan_versions SET body = ?, status = ?, updated_us = ?"
                " WHERE namespace = ? AND plan = ? AND version = ?",
                (_encode(updated), updated.status.value, self._now_us(), namespace, plan, version),
            )
            return updated

        return self._db.writer.call(task)

    def versions(self, namespace: str, plan: str | None = None) -> builtins.list[PlanVersion]:
        rows = self._db.reader().execute(
            "SELECT body FROM plan_versions WHERE namespace = ? AND (? IS NULL OR plan = ?) ORDER BY plan, version",
            (namespace, plan, plan),
        )
        return [_plan.decode(body) for (body,) in rows]

    def get(self, namespace: str, plan: str, version: int) -> PlanVersion:
        return _get_plan(self._db.reader(), namespace, plan, version)


def _get_plan(conn: sqlite3.Connection, namespace: str, plan: str, version: int) -> PlanVersion:
    row = conn.execute(
        "SELECT body FROM plan_versions WHERE namespace = ? AND plan = ? AND version = ?",
        (namespace, plan, version),
    ).fetchone()
    if row is None:
        raise NotFound(f"no plan {plan!r} version {version}", code="plan_not_found")
    return _plan.decode(row[0])


class SqliteSubscriptions:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(
        self, new: StoredSubscription, check: Callable[[builtins.list[StoredSubscription]], None]
    ) -> StoredSubscription:
        def task(conn: sqlite3.Connection) -> StoredSubscription:
            check(_subscriptions(conn, new.namespace, new.customer_id))
            _insert(conn, new)
            return new

        return self._db.writer.call(task)

    def update(self, namespace: str, id_: str, change: Change) -> tuple[StoredSubscription, StoredSubscription | None]:
        def task(conn: sqlite3.Connection) -> tuple[StoredSubscription, StoredSubscription | None]:
            old = _get_subscription(conn, namespace, id_)
            terms, successor = change(old)
            end = None if terms.end is None else to_us(terms.end)
            conn.execute("UPDATE subscriptions SET body = ?, end_us = ? WHERE id = ?", (_encode(terms), end, id_))
            if successor is not None:
                _insert(conn, successor)
            return msgspec.structs.replace(old, subscription=terms), successor

        return self._db.writer.call(task)

    def get(self, namespace: str, id_: str) -> StoredSubscription:
        return _get_subscription(self._db.reader(), namespace, id_)

    def list(self, namespace: str, customer_id: str | None = None) -> builtins.list[StoredSubscription]:
        return _subscriptions(self._db.reader(), namespace, customer_id)

    def open(self, namespace: str | None, starting_before_us: int | None = None) -> builtins.list[StoredSubscription]:
        rows = self._db.reader().execute(
            f"SELECT {_SUB} FROM subscriptions WHERE (? IS NULL OR namespace = ?) AND {_OPEN}"
            " AND (? IS NULL OR start_us < ?) ORDER BY namespace, customer, start_us, id",
            (namespace, namespace, starting_before_us, starting_before_us),
        )
        return [_load(row) for row in rows]

    def billed_through(self, namespace: str | None) -> dict[str, int]:
        rows = self._db.reader().execute(
            "SELECT id, billed_through_us FROM subscriptions WHERE (? IS NULL OR namespace = ?)", (namespace, namespace)
        )
        return {id_: int(through) for id_, through in rows}


def _subscriptions(
    conn: sqlite3.Connection, namespace: str, customer_id: str | None
) -> builtins.list[StoredSubscription]:
    rows = conn.execute(
        f"SELECT {_SUB} FROM subscriptions WHERE namespace = ? AND (? IS NULL OR customer = ?)"
        " ORDER BY customer, start_us, id",
        (namespace, customer_id, customer_id),
    )
    return [_load(row) for row in rows]


def _get_subscription(conn: sqlite3.Connection, namespace: str, id_: str) -> StoredSubscription:
    row = conn.execute(f"SELECT {_SUB} FROM subscriptions WHERE namespace = ? AND id = ?", (namespace, id_)).fetchone()
    if row is None:
        raise NotFound(f"no subscription {id_!r}", code="subscription_not_found")
    return _load(row)


def _insert(conn: sqlite3.Connection, s: StoredSubscription) -> None:
    sub = s.subscription
    conn.execute(
        f"INSERT INTO subscriptions ({_SUB}, start_us, end_us) VALUES (?,?,?,?,?,?,?,?,?)",
        (*subscription_row(s), to_us(sub.start), None if sub.end is None else to_us(sub.end)),
    )


def subscription_row(s: StoredSubscription) -> tuple[Any, ...]:
    """Values for ``id, namespace, customer, body, billed_through_us, previous, created_us``."""
    return (s.id, s.namespace, s.customer_id, _encode(s.subscription), s.billed_through_us, s.previous, s.created_us)


def _load(row: tuple[Any, ...]) -> StoredSubscription:
    id_, namespace, customer, body, billed, previous, created = row
    return StoredSubscription(id_, namespace, customer, _sub.decode(body), billed, previous, created)
