"""Customers, their subject keys and the unknown-subject policy, in PostgreSQL (the
:mod:`meterline.ports.customers` repositories; the rules are in the customer service).

Every write is one transaction: a customer and its subject claims commit together, and the
unique key on ``customer_subjects (namespace, subject)`` keeps a subject with one customer even
when two API nodes claim it at once. A save marks the held events of the subjects it claims
released, in its transaction (``adapters.postgres.quarantine``): ``released`` counts them; the
releaser writes them to the log after the save (``services.quarantine``).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from ulid import ULID

from meterline.adapters.postgres.database import Connection, PgDatabase, is_unique_violation, lock
from meterline.adapters.postgres.quarantine import PgQuarantine, mark_released
from meterline.adapters.postgres.rekey import rekey_references
from meterline.domain.customers.model import (
    Customer,
    CustomerInput,
    UnknownSubjects,
    customer_exists,
    key_is_an_id,
    subject_claimed,
    upserted,
)
from meterline.domain.errors import Conflict, NotFound
from meterline.ports.customers import Quarantined, Saved

_COLUMNS = "id, namespace, key, name, timezone, metadata, created_us, updated_us, profile"
_READ = _COLUMNS + ", deleted_us, deleted_subjects"
"""A stored customer as read back: a deleted one keeps the subject keys it had in
``deleted_subjects`` (JSON, migration 15), as they no longer claim anything in ``customer_subjects``."""


class PgCustomers:
    def __init__(self, db: PgDatabase, now_us: Callable[[], int]) -> None:
        self._db = db
        self._now_us = now_us
        self._quarantine = PgQuarantine(db, now_us)

    def create(self, namespace: str, inp: CustomerInput) -> Saved:
        with self._db.tx() as conn:
            lock(conn, "customers", namespace)
            return self._save(conn, namespace, inp, None)

    def replace(self, namespace: str, key: str, inp: CustomerInput) -> Saved:
        with self._db.tx() as conn:
            lock(conn, "customers", namespace)
            return self._save(conn, namespace, inp, _get(conn, namespace, key))

    def upsert_many(self, namespace: str, inputs: Sequence[CustomerInput]) -> builtins.list[Saved]:
        with self._db.tx() as conn:
            lock(conn, "customers", namespace)
            return [self._upsert(conn, namespace, inp) for inp in inputs]

    def _upsert(self, conn: Connection, namespace: str, inp: CustomerInput) -> Saved:
        try:
            existing = _get(conn, namespace, inp.key)
        except NotFound:
            return self._save(conn, namespace, inp, None)
        return self._save(conn, namespace, upserted(existing, inp), existing)

    def delete(self, namespace: str, key: str) -> None:
        with self._db.tx() as conn:
            lock(conn, "customers", namespace)
            customer = _get(conn, namespace, key)
            conn.execute(
                "UPDATE customers SET deleted_us = %s, deleted_subjects = %s WHERE id = %s",
                (self._now_us(), msgspec.json.encode(customer.subjects), customer.id),
            )
            conn.execute("DELETE FROM customer_subjects WHERE customer = %s", (customer.id,))

    def set_policy(self, namespace: str, policy: UnknownSubjects) -> None:
        with self._db.tx() as conn:
            conn.execute(
                "INSERT INTO namespace_settings VALUES (%s, %s)"
                " ON CONFLICT (namespace) DO UPDATE SET unknown_subjects = excluded.unknown_subjects",
                (namespace, policy.value),
            )

    def _save(self, conn: Connection, namespace: str, inp: CustomerInput, old: Customer | None) -> Saved:
        now = self._now_us()
        subjects = inp.subjects()
        _check_claims(conn, namespace, subjects, None if old is None else old.id)
        meta = None if inp.metadata is None else msgspec.json.encode(inp.metadata)
        profile = inp.profile()
        stored_profile = None if profile is None else msgspec.json.encode(profile)
        if old is None:
            cid, created = str(ULID()), now
            if conn.execute(
                "SELECT 1 FROM customers WHERE namespace = %s AND key = %s AND deleted_us IS NULL", (namespace, inp.key)
            ).fetchone():
                raise customer_exists(inp.key)
            conn.execute(
                "INSERT INTO customers (" + _COLUMNS + ") VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (cid, namespace, inp.key, inp.name, inp.timezone, meta, now, now, stored_profile),
            )
        else:
            cid, created = old.id, old.created_us
            if inp.key != old.key:
                _rekey(conn, namespace, old, inp.key)
            conn.execute(
                "UPDATE customers SET name = %s, timezone = %s, metadata = %s, updated_us = %s, profile = %s"
                " WHERE id = %s",
                (inp.name, inp.timezone, meta, now, stored_profile, cid),
            )
            conn.execute("DELETE FROM customer_subjects WHERE customer = %s", (cid,))
        try:
            with conn.transaction():  # a savepoint: the claim races another node's only here
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO customer_subjects VALUES (%s,%s,%s)", [(namespace, s, cid) for s in subjects]
                    )
        except Exception as exc:
            if is_unique_violation(exc):
                raise Conflict("a subject was claimed by another customer", code="subject_claimed") from None
            raise
        customer = Customer(
            cid, namespace, inp.key, inp.name, subjects, inp.timezone, inp.metadata, created, now, profile
        )
        return Saved(customer, mark_released(conn, namespace, customer.usage_subjects, now), 0)

    def get(self, namespace: str, key_or_id: str, *, include_deleted: bool = False) -> Customer:
        with self._db.tx() as conn:
            try:
                return _get(conn, namespace, key_or_id)
            except NotFound:
                if not include_deleted:
                    raise
                row = conn.execute(
                    "SELECT " + _READ + " FROM customers WHERE namespace = %s AND id = %s AND deleted_us IS NOT NULL",
                    (namespace, key_or_id),
                ).fetchone()
                if row is None:
                    raise
                return _build(row, ())

    def list(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Customer]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT " + _READ + " FROM customers WHERE namespace = %s AND (%s OR deleted_us IS NULL)"
                " ORDER BY key, id",
                (namespace, include_deleted),
            ).fetchall()
            return [_customer(conn, row) for row in rows]

    def by_subject(self, namespace: str, subject: str) -> Customer | None:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT " + _READ + " FROM customers WHERE id ="
                " (SELECT customer FROM customer_subjects WHERE namespace = %s AND subject = %s)",
                (namespace, subject),
            ).fetchone()
            return None if row is None else _customer(conn, row)

    def policy(self, namespace: str) -> UnknownSubjects | None:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT unknown_subjects FROM namespace_settings WHERE namespace = %s", (namespace,)
            ).fetchone()
        return None if row is None else UnknownSubjects(row[0])

    def quarantined(
        self, namespace: str, subject: str | None, *, limit: int, after_id: int
    ) -> builtins.list[Quarantined]:
        return self._quarantine.quarantined(namespace, subject, limit=limit, after_id=after_id)

    def load_all(self, namespace: str | None = None) -> builtins.list[Customer]:
        """Every live customer (of ``namespace``, or of every one) with its subjects, in two queries."""
        with self._db.tx() as conn:
            subjects: dict[str, builtins.list[str]] = {}
            claims = conn.execute(
                "SELECT customer, subject FROM customer_subjects WHERE %(ns)s::text IS NULL OR namespace = %(ns)s"
                " ORDER BY customer, subject",
                {"ns": namespace},
            )
            for cid, subject in claims.fetchall():
                subjects.setdefault(cid, []).append(subject)
            rows = conn.execute(
                "SELECT " + _READ + " FROM customers"
                " WHERE deleted_us IS NULL AND (%(ns)s::text IS NULL OR namespace = %(ns)s) ORDER BY namespace, key",
                {"ns": namespace},
            ).fetchall()
        return [_build(row, tuple(subjects.get(row[0], ()))) for row in rows]


def _rekey(conn: Connection, namespace: str, old: Customer, key: str) -> None:
    """OpenMeter's key change (the namespace's customers are locked): the new key is no other
    live customer's key or id, and no subject another customer claims."""
    row = conn.execute(
        "SELECT key, id = %s FROM customers WHERE namespace = %s AND (key = %s OR id = %s) AND id <> %s"
        " AND deleted_us IS NULL ORDER BY 2",
        (key, namespace, key, key, old.id),
    ).fetchone()
    if row is not None:
        raise key_is_an_id(key, row[0]) if row[1] else customer_exists(key)
    _check_claims(conn, namespace, [key], old.id)
    conn.execute("UPDATE customers SET key = %s WHERE id = %s", (key, old.id))
    rekey_references(conn, old.id, key)


def _check_claims(conn: Connection, namespace: str, subjects: Sequence[str], own: str | None) -> None:
    rows = conn.execute(
        "SELECT s.subject, c.key FROM customer_subjects s JOIN customers c ON c.id = s.customer"
        " WHERE s.namespace = %s AND s.subject = ANY(%s) AND s.customer IS DISTINCT FROM %s ORDER BY s.subject",
        (namespace, list(subjects), own),
    ).fetchall()
    if rows:
        subject, owner = rows[0]
        raise subject_claimed(subject, owner)


def _get(conn: Connection, namespace: str, key_or_id: str) -> Customer:
    row = conn.execute(
        "SELECT " + _READ + " FROM customers WHERE namespace = %s AND deleted_us IS NULL AND (key = %s OR id = %s)",
        (namespace, key_or_id, key_or_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"no customer {key_or_id!r}", code="customer_not_found")
    return _customer(conn, row)


def _customer(conn: Connection, row: tuple[Any, ...]) -> Customer:
    if row[9] is not None:  # deleted: its subject keys are kept on the row, no longer claimed
        return _build(row, ())
    subjects = conn.execute("SELECT subject FROM customer_subjects WHERE customer = %s ORDER BY subject", (row[0],))
    return _build(row, tuple(s for (s,) in subjects.fetchall()))


def _build(row: tuple[Any, ...], subjects: tuple[str, ...]) -> Customer:
    """A customer from a row of ``_READ`` and, when it is live, its claimed ``subjects``."""
    cid, namespace, key, name, tz, meta, created, updated, profile, deleted, deleted_subjects = row
    metadata = None if meta is None else msgspec.json.decode(meta)
    extra = None if profile is None else msgspec.json.decode(profile)
    if deleted is not None:
        subjects = () if deleted_subjects is None else tuple(msgspec.json.decode(deleted_subjects))
    return Customer(cid, namespace, key, name, subjects, tz, metadata, created, updated, extra, deleted)
