"""Billing stores in PostgreSQL: plan versions and subscriptions (invoices and credits:
``billing_invoices``), and :func:`billing_stores` that builds them with the directory.

The check a service hands a write (a draft is still a draft, a customer's subscriptions do not
overlap) runs in the transaction of the write it guards, under an advisory lock on what it read
(the plan; the customer's subscriptions), so two API nodes cannot both pass it.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

import msgspec

from meterline.adapters.postgres.billing_invoices import PgCredits, PgInvoices, PgInvoiceUnitOfWork
from meterline.adapters.postgres.customers import PgCustomers
from meterline.adapters.postgres.database import Connection, PgDatabase, is_unique_violation, lock
from meterline.adapters.postgres.meters import PgMeters
from meterline.domain.billing import PlanVersion, Subscription
from meterline.domain.billing.records import StoredSubscription
from meterline.domain.clock import to_us
from meterline.domain.customers.model import Customer
from meterline.domain.errors import Conflict, NotFound
from meterline.domain.meters.model import Meter
from meterline.ports.billing import BillingStores
from meterline.ports.billing_subscriptions import Change
from meterline.ports.billing_usage import PeriodUsage

_plan = msgspec.json.Decoder(PlanVersion)
_sub = msgspec.json.Decoder(Subscription)
_encode = msgspec.json.Encoder().encode
_SUB = "SELECT id, namespace, customer, body, billed_through_us, previous, created_us FROM subscriptions"
_OPEN = "billed_through_us < coalesce(end_us, 4611686018427387904)"


def billing_stores(
    db: PgDatabase, customers: PgCustomers, meters: PgMeters, usage: PeriodUsage, now_us: Callable[[], int]
) -> BillingStores:
    """Every billing store over ``db``, with the usage the usage store answers."""
    return BillingStores(
        plans=PgPlans(db, now_us),
        subscriptions=PgSubscriptions(db),
        invoices=PgInvoices(db),
        finalizing=PgInvoiceUnitOfWork(db),
        credits=PgCredits(db),
        usage=usage,
        directory=PgBillingDirectory(customers, meters),
    )


class PgBillingDirectory:
    """``BillingDirectory``: the customers and meters of the catalog, read for billing."""

    def __init__(self, customers: PgCustomers, meters: PgMeters) -> None:
        self._customers = customers
        self._meters = meters

    def customer(self, namespace: str, key: str) -> Customer:
        return self._customers.get(namespace, key)

    def customers(self, namespace: str) -> dict[str, Customer]:
        return {c.id: c for c in self._customers.load_all(namespace)}

    def meters(self, namespace: str) -> list[Meter]:
        return self._meters.list(namespace)


class PgPlans:
    def __init__(self, db: PgDatabase, now_us: Callable[[], int]) -> None:
        self._db = db
        self._now_us = now_us

    def add(self, namespace: str, plan: str, build: Callable[[int], PlanVersion]) -> PlanVersion:
        try:
            with self._db.tx() as conn:
                lock(conn, "plan", namespace, plan)
                row = conn.execute(
                    "SELECT coalesce(max(version), 0) FROM plan_versions WHERE namespace = %s AND plan = %s",
                    (namespace, plan),
                ).fetchone()
                stored = build(int(row[0]) if row else 0)
                now = self._now_us()
                conn.execute(
                    "INSERT INTO plan_versions VALUES (%s,%s,%s,%s,%s,%s,%s)",
                    (namespace, stored.plan, stored.version, stored.status.value, _encode(stored), now, now),
                )
                return stored
        except Exception as exc:
            if is_unique_violation(exc):
                raise Conflict("this plan version already exists", code="plan_version_exists") from None
            raise

    def update(
        self, namespace: str, plan: str, version: int, change: Callable[[PlanVersion], PlanVersion]
    ) -> PlanVersion:
        with self._db.tx() as conn:
            updated = change(_get_plan(conn, namespace, plan, version, for_update=True))
            conn.execute(
                "UPDATE plan_versions SET body = %s, status = %s, updated_us = %s"
                " WHERE namespace = %s AND plan = %s AND version = %s",
                (_encode(updated), updated.status.value, self._now_us(), namespace, plan, version),
            )
            return updated

    def versions(self, namespace: str, plan: str | None = None) -> builtins.list[PlanVersion]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT body FROM plan_versions WHERE namespace = %(ns)s"
                " AND (%(plan)s::text IS NULL OR plan = %(plan)s) ORDER BY plan, version",
                {"ns": namespace, "plan": plan},
            ).fetchall()
        return [_plan.decode(body) for (body,) in rows]

    def get(self, namespace: str, plan: str, version: int) -> PlanVersion:
        with self._db.tx() as conn:
            return _get_plan(conn, namespace, plan, version)


def _get_plan(conn: Connection, namespace: str, plan: str, version: int, *, for_update: bool = False) -> PlanVersion:
    sql = "SELECT body FROM plan_versions WHERE namespace = %s AND plan = %s AND version = %s"
    row = conn.execute(sql + (" FOR UPDATE" if for_update else ""), (namespace, plan, version)).fetchone()
    if row is None:
        raise NotFound(f"no plan {plan!r} version {version}", code="plan_not_found")
    return _plan.decode(row[0])


class PgSubscriptions:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def add(
        self, new: StoredSubscription, check: Callable[[builtins.list[StoredSubscription]], None]
    ) -> StoredSubscription:
        with self._db.tx() as conn:
            lock(conn, "subscriptions", new.namespace, new.customer_id)
            check(_subscriptions(conn, new.namespace, new.customer_id))
            _insert(conn, new)
            return new

    def update(self, namespace: str, id_: str, change: Change) -> tuple[StoredSubscription, StoredSubscription | None]:
        with self._db.tx() as conn:
            old = _get_subscription(conn, namespace, id_)
            lock(conn, "subscriptions", namespace, old.customer_id)
            old = _get_subscription(conn, namespace, id_)  # as of the lock
            terms, successor = change(old)
            end = None if terms.end is None else to_us(terms.end)
            conn.execute("UPDATE subscriptions SET body = %s, end_us = %s WHERE id = %s", (_encode(terms), end, id_))
            if successor is not None:
                _insert(conn, successor)
            return msgspec.structs.replace(old, subscription=terms), successor

    def get(self, namespace: str, id_: str) -> StoredSubscription:
        with self._db.tx() as conn:
            return _get_subscription(conn, namespace, id_)

    def list(self, namespace: str, customer_id: str | None = None) -> builtins.list[StoredSubscription]:
        with self._db.tx() as conn:
            return _subscriptions(conn, namespace, customer_id)

    def open(self, namespace: str | None, starting_before_us: int | None = None) -> builtins.list[StoredSubscription]:
        with self._db.tx() as conn:
            rows = conn.execute(
                _SUB + " WHERE (%(ns)s::text IS NULL OR namespace = %(ns)s) AND " + _OPEN + ""
                " AND (%(before)s::bigint IS NULL OR start_us < %(before)s) ORDER BY namespace, customer, start_us, id",
                {"ns": namespace, "before": starting_before_us},
            ).fetchall()
        return [_load(row) for row in rows]

    def billed_through(self, namespace: str | None) -> dict[str, int]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT id, billed_through_us FROM subscriptions WHERE (%(ns)s::text IS NULL OR namespace = %(ns)s)",
                {"ns": namespace},
            ).fetchall()
        return {id_: int(through) for id_, through in rows}


def _subscriptions(conn: Connection, namespace: str, customer_id: str | None) -> builtins.list[StoredSubscription]:
    rows = conn.execute(
        _SUB
        + " WHERE namespace = %(ns)s AND (%(c)s::text IS NULL OR customer = %(c)s) ORDER BY customer, start_us, id",
        {"ns": namespace, "c": customer_id},
    ).fetchall()
    return [_load(row) for row in rows]


def _get_subscription(conn: Connection, namespace: str, id_: str) -> StoredSubscription:
    row = conn.execute(_SUB + " WHERE namespace = %s AND id = %s", (namespace, id_)).fetchone()
    if row is None:
        raise NotFound(f"no subscription {id_!r}", code="subscription_not_found")
    return _load(row)


def _insert(conn: Connection, s: StoredSubscription) -> None:
    sub = s.subscription
    conn.execute(
        "INSERT INTO subscriptions (id, namespace, customer, body, billed_through_us, previous, created_us,"
        " start_us, end_us) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
        (
            s.id,
            s.namespace,
            s.customer_id,
            _encode(sub),
            s.billed_through_us,
            s.previous,
            s.created_us,
            to_us(sub.start),
            None if sub.end is None else to_us(sub.end),
        ),
    )


def _load(row: tuple[Any, ...]) -> StoredSubscription:
    id_, namespace, customer, body, billed, previous, created = row
    return StoredSubscription(id_, namespace, customer, _sub.decode(body), billed, previous, created)
