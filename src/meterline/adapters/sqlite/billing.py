"""Billing catalog in SQLite: plan versions and subscriptions (invoices: ``billing_invoices``).

Writes are writer tasks, so every check (a version is still a draft, subscriptions of a
customer do not overlap, a change does not reach into an invoiced period) runs in the same
transaction as the write it guards.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import msgspec
from ulid import ULID

from meterline.adapters.sqlite.billing_invoices import SqliteInvoices
from meterline.adapters.sqlite.billing_model import StoredSubscription, load_subscription, subscription_row
from meterline.adapters.sqlite.customers import SqliteCustomers
from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.meters import SqliteMeters
from meterline.domain.billing import (
    PlanStatus,
    PlanVersion,
    Subscription,
    change_plan,
    check_plan,
    next_version,
    publish,
    revise,
)
from meterline.domain.billing.subscriptions import cancel, check_subscription
from meterline.domain.clock import from_us, to_us
from meterline.domain.errors import Conflict, InvalidInput, InvalidPlan, NotFound

T = TypeVar("T")
_plan = msgspec.json.Decoder(PlanVersion)
_encode = msgspec.json.Encoder().encode
_SUB = "id, namespace, customer, body, billed_through_us, previous, created_us"
MINUTE_US = 60_000_000


class SqliteBilling:
    def __init__(
        self, db: Database, customers: SqliteCustomers, meters: SqliteMeters, now_us: Callable[[], int]
    ) -> None:
        self.db = db
        self.customers = customers
        self.meters = meters
        self.now_us = now_us
        self.invoices = SqliteInvoices(db, now_us)
        self.run_lock = threading.Lock()
        """Held by a billing run or re-issue: one at a time in this process."""

    def _write(self, task: Callable[[sqlite3.Connection], T]) -> T:
        return self.db.writer.call(task)

    # -- plans ------------------------------------------------------------------------------

    def create_plan(self, namespace: str, plan: PlanVersion, *, auto_version: bool) -> PlanVersion:
        """Store a new draft; ``auto_version`` numbers it after the plan's latest version."""
        draft = check_plan(msgspec.structs.replace(plan, status=PlanStatus.DRAFT, published_at=None))

        def task(conn: sqlite3.Connection) -> PlanVersion:
            stored = draft
            if auto_version:
                stored = msgspec.structs.replace(draft, version=_latest(conn, namespace, draft.plan) + 1)
            self._insert_plan(conn, namespace, stored)
            return stored

        return self._write(task)

    def replace_plan(self, namespace: str, plan: PlanVersion) -> PlanVersion:
        """Replace a draft's content; a published version raises ``PlanVersionPublished``."""
        check_plan(plan)

        def task(conn: sqlite3.Connection) -> PlanVersion:
            current = self._plan(conn, namespace, plan.plan, plan.version)
            changes = {f: getattr(plan, f) for f in ("currency", "cards", "cadence", "minimum_commitment", "name")}
            updated = check_plan(revise(current, **changes))
            conn.execute(
                "UPDATE plan_versions SET body = ?, updated_us = ? WHERE namespace = ? AND plan = ? AND version = ?",
                (_encode(updated), self.now_us(), namespace, plan.plan, plan.version),
            )
            return updated

        return self._write(task)

    def publish_plan(self, namespace: str, plan: str, version: int) -> PlanVersion:
        """Freeze a draft. Its meters must exist, with the group-by dimensions its cards price."""
        self._check_meters(namespace, self.plan(namespace, plan, version))

        def task(conn: sqlite3.Connection) -> PlanVersion:
            published = publish(self._plan(conn, namespace, plan, version), from_us(self.now_us()))
            conn.execute(
                "UPDATE plan_versions SET body = ?, status = 'published', updated_us = ?"
                " WHERE namespace = ? AND plan = ? AND version = ?",
                (_encode(published), self.now_us(), namespace, plan, version),
            )
            return published

        return self._write(task)

    def copy_plan(self, namespace: str, plan: str, version: int) -> PlanVersion:
        """A new draft version (the plan's next number) copying ``version``."""

        def task(conn: sqlite3.Connection) -> PlanVersion:
            source = self._plan(conn, namespace, plan, version)
            draft = next_version(source, _latest(conn, namespace, plan) + 1)
            self._insert_plan(conn, namespace, draft)
            return draft

        return self._write(task)

    def plans(self, namespace: str, plan: str | None = None) -> builtins.list[PlanVersion]:
        rows = self.db.reader().execute(
            "SELECT body FROM plan_versions WHERE namespace = ? AND (? IS NULL OR plan = ?) ORDER BY plan, version",
            (namespace, plan, plan),
        )
        return [_plan.decode(body) for (body,) in rows]

    def plan(self, namespace: str, plan: str, version: int | None = None) -> PlanVersion:
        """One version; ``None`` means the latest published one."""
        if version is None:
            published = [p for p in self.plans(namespace, plan) if p.published]
            if not published:
                raise NotFound(f"plan {plan!r} has no published version", code="plan_not_found")
            return published[-1]
        return self._plan(self.db.reader(), namespace, plan, version)

    def _plan(self, conn: sqlite3.Connection, namespace: str, plan: str, version: int) -> PlanVersion:
        row = conn.execute(
            "SELECT body FROM plan_versions WHERE namespace = ? AND plan = ? AND version = ?",
            (namespace, plan, version),
        ).fetchone()
        if row is None:
            raise NotFound(f"no plan {plan!r} version {version}", code="plan_not_found")
        return _plan.decode(row[0])

    def _insert_plan(self, conn: sqlite3.Connection, namespace: str, plan: PlanVersion) -> None:
        now = self.now_us()
        try:
            conn.execute(
                "INSERT INTO plan_versions VALUES (?,?,?,?,?,?,?)",
                (namespace, plan.plan, plan.version, plan.status.value, _encode(plan), now, now),
            )
        except sqlite3.IntegrityError:
            raise Conflict(
                f"plan {plan.plan!r} version {plan.version} already exists", code="plan_version_exists"
            ) from None

    def _check_meters(self, namespace: str, plan: PlanVersion) -> None:
        problems: builtins.list[str] = []
        for i, card in enumerate(plan.cards):
            if card.meter is None:
                continue
            try:
                meter = self.meters.get(namespace, card.meter)
            except NotFound:
                problems.append(f"cards[{i}].meter {card.meter!r} is not a meter of this namespace")
                continue
            if card.group_by is not None and card.group_by not in meter.spec.group_by:
                problems.append(f"cards[{i}].groupBy {card.group_by!r} is not a groupBy of meter {card.meter!r}")
        if problems:
            raise InvalidPlan("Invalid price plan: " + "; ".join(problems), problems=problems)

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, namespace: str, sub: Subscription) -> StoredSubscription:
        """Start ``sub`` (customer key, published plan version, minute-aligned start)."""
        customer = self.customers.get(namespace, sub.customer)
        self._check_plan_version(namespace, sub.plan, sub.version)
        sub = check_subscription(msgspec.structs.replace(sub, customer=customer.key))
        aligned("start", sub.start)
        stored = StoredSubscription(str(ULID()), namespace, customer.id, sub, to_us(sub.start), None, self.now_us())

        def task(conn: sqlite3.Connection) -> StoredSubscription:
            self._check_overlap(conn, stored)
            conn.execute(
                f"INSERT INTO subscriptions ({_SUB}, start_us, end_us) VALUES (?,?,?,?,?,?,?,?,?)",
                (*subscription_row(stored), to_us(sub.start), None if sub.end is None else to_us(sub.end)),
            )
            return stored

        return self._write(task)

    def change(
        self, namespace: str, id_: str, at: datetime, plan: str, version: int
    ) -> builtins.list[StoredSubscription]:
        """End subscription ``id_`` at ``at`` and start ``plan`` ``version`` there: [closed, started]."""
        aligned("at", at)
        self._check_plan_version(namespace, plan, version)

        def task(conn: sqlite3.Connection) -> builtins.list[StoredSubscription]:
            old = self._subscription(conn, namespace, id_)
            closed, started = change_plan(old.subscription, at, plan, version)
            _not_invoiced(old, at)
            new = StoredSubscription(str(ULID()), namespace, old.customer_id, started, to_us(at), old.id, self.now_us())
            self._set_end(conn, old.id, closed)
            conn.execute(
                f"INSERT INTO subscriptions ({_SUB}, start_us, end_us) VALUES (?,?,?,?,?,?,?,?,?)",
                (*subscription_row(new), to_us(at), None if started.end is None else to_us(started.end)),
            )
            return [msgspec.structs.replace(old, subscription=closed), new]

        return self._write(task)

    def cancel(self, namespace: str, id_: str, at: datetime) -> StoredSubscription:
        """End billing of ``id_`` at ``at`` (not inside an already invoiced period)."""
        aligned("at", at)

        def task(conn: sqlite3.Connection) -> StoredSubscription:
            old = self._subscription(conn, namespace, id_)
            ended = cancel(old.subscription, at)
            _not_invoiced(old, at)
            self._set_end(conn, old.id, ended)
            return msgspec.structs.replace(old, subscription=ended)

        return self._write(task)

    def subscriptions(self, namespace: str, customer_id: str | None = None) -> builtins.list[StoredSubscription]:
        rows = self.db.reader().execute(
            f"SELECT {_SUB} FROM subscriptions WHERE namespace = ? AND (? IS NULL OR customer = ?)"
            " ORDER BY customer, start_us, id",
            (namespace, customer_id, customer_id),
        )
        return [load_subscription(row) for row in rows]

    def subscription(self, namespace: str, id_: str) -> StoredSubscription:
        return self._subscription(self.db.reader(), namespace, id_)

    def _subscription(self, conn: sqlite3.Connection, namespace: str, id_: str) -> StoredSubscription:
        row = conn.execute(
            f"SELECT {_SUB} FROM subscriptions WHERE namespace = ? AND id = ?", (namespace, id_)
        ).fetchone()
        if row is None:
            raise NotFound(f"no subscription {id_!r}", code="subscription_not_found")
        return load_subscription(row)

    def _set_end(self, conn: sqlite3.Connection, id_: str, sub: Subscription) -> None:
        assert sub.end is not None
        conn.execute("UPDATE subscriptions SET body = ?, end_us = ? WHERE id = ?", (_encode(sub), to_us(sub.end), id_))

    def _check_plan_version(self, namespace: str, plan: str, version: int) -> None:
        if not self.plan(namespace, plan, version).published:
            raise Conflict(
                f"plan {plan!r} version {version} is a draft; publish it before subscribing", code="plan_not_published"
            )

    def _check_overlap(self, conn: sqlite3.Connection, new: StoredSubscription) -> None:
        end = None if new.subscription.end is None else to_us(new.subscription.end)
        row = conn.execute(
            "SELECT id FROM subscriptions WHERE namespace = ? AND customer = ? AND (end_us IS NULL OR end_us > ?)"
            " AND (? IS NULL OR start_us < ?)",
            (new.namespace, new.customer_id, new.billed_through_us, end, end),
        ).fetchone()
        if row is not None:
            raise Conflict(
                f"customer {new.subscription.customer!r} already has subscription {row[0]!r} in that time;"
                " change its plan or cancel it first",
                code="subscription_overlaps",
            )


def _latest(conn: sqlite3.Connection, namespace: str, plan: str) -> int:
    row = conn.execute(
        "SELECT coalesce(max(version), 0) FROM plan_versions WHERE namespace = ? AND plan = ?", (namespace, plan)
    ).fetchone()
    return int(row[0])


def aligned(name: str, t: datetime) -> None:
    """Refuse an instant without an offset or off a whole minute (usage is kept per minute)."""
    if t.utcoffset() is None:
        raise InvalidInput(f"`{name}` must carry a UTC offset", code="invalid_datetime")
    if to_us(t) % MINUTE_US:
        raise InvalidInput(f"`{name}` must fall on a whole minute (usage is kept per minute)", code="unaligned_time")


def _not_invoiced(old: StoredSubscription, at: datetime) -> None:
    if to_us(at) < old.billed_through_us:
        raise Conflict(
            f"subscription {old.id!r} is invoiced up to {from_us(old.billed_through_us).isoformat()};"
            " a change or cancellation must come after that",
            code="period_invoiced",
        )
