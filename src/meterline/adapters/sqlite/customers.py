"""Customers, their subject keys, the unknown-subject policy and the quarantine, in SQLite
(the :mod:`meterline.ports.customers` repositories; the rules are in the customer service).

Every write is one writer task, so a customer, its subject claims and the release of its
quarantined events commit together: a released event is in the ledger and its rollups, or
still in quarantine, never both and never neither.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
from ulid import ULID

from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.ingest import Appender, IngestState
from meterline.adapters.sqlite.rekey import rekey_references
from meterline.adapters.sqlite.replay import event_data
from meterline.domain.customers.model import (
    Customer,
    CustomerInput,
    UnknownSubjects,
    customer_exists,
    key_is_an_id,
    subject_claimed,
    upserted,
)
from meterline.domain.errors import NotFound
from meterline.domain.events.model import Event
from meterline.ports.customers import Quarantined, Saved

T = TypeVar("T")
_COLUMNS = "id, namespace, key, name, timezone, metadata, created_us, updated_us, profile"
_READ = _COLUMNS + ", deleted_us, deleted_subjects"
"""A stored customer as read back: a deleted one keeps the subject keys it had in
``deleted_subjects`` (JSON), as they no longer claim anything in ``customer_subjects``."""


class SqliteCustomers:
    def __init__(self, db: Database, state: IngestState, now_us: Callable[[], int]) -> None:
        self._db = db
        self._state = state
        self._now_us = now_us
        self.changed: Callable[[], None] = lambda: None
        """Called after every committed change (the live counters reload their index)."""
        self.created: Callable[[Customer], None] = lambda customer: None
        """Called after a new customer committed."""

    def _write(self, task: Callable[[sqlite3.Connection], T]) -> T:
        result = self._db.writer.call(task)
        self.changed()
        return result

    # -- writes -----------------------------------------------------------------------------

    def create(self, namespace: str, inp: CustomerInput) -> Saved:
        saved = self._db.writer.call(lambda conn: self._save(conn, namespace, inp, None))
        self.created(saved.customer)  # a new customer has no entitlements: no full reload needed
        return saved

    def replace(self, namespace: str, key: str, inp: CustomerInput) -> Saved:
        """Replace a customer's key, name, zone, metadata and subjects (a new key is
        written into its entitlements and subscriptions in the same transaction)."""
        return self._write(lambda conn: self._save(conn, namespace, inp, self._get(conn, namespace, key)))

    def upsert_many(self, namespace: str, inputs: Sequence[CustomerInput]) -> list[Saved]:
        """Create or update customers by key (OpenMeter's subject upsert): all commit in one
        transaction, or none does."""
        return self._write(lambda conn: [self._upsert(conn, namespace, inp) for inp in inputs])

    def _upsert(self, conn: sqlite3.Connection, namespace: str, inp: CustomerInput) -> Saved:
        try:
            existing = self._get(conn, namespace, inp.key)
        except NotFound:
            return self._save(conn, namespace, inp, None)
        return self._save(conn, namespace, upserted(existing, inp), existing)

    def delete(self, namespace: str, key: str) -> None:
        def task(conn: sqlite3.Connection) -> None:
            customer = self._get(conn, namespace, key)
            conn.execute(
                "UPDATE customers SET deleted_us = ?, deleted_subjects = ? WHERE id = ?",
                (self._now_us(), msgspec.json.encode(customer.subjects), customer.id),
            )
            conn.execute("DELETE FROM customer_subjects WHERE customer = ?", (customer.id,))
            self._state.invalidate()

        self._write(task)

    def set_policy(self, namespace: str, policy: UnknownSubjects) -> None:
        def task(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO namespace_settings VALUES (?, ?)", (namespace, policy.value))
            self._state.invalidate()

        self._db.writer.call(task)

    def _save(self, conn: sqlite3.Connection, namespace: str, inp: CustomerInput, old: Customer | None) -> Saved:
        now = self._now_us()
        subjects = inp.subjects()
        self._check_claims(conn, namespace, subjects, None if old is None else old.id)
        meta = None if inp.metadata is None else msgspec.json.encode(inp.metadata)
        profile = inp.profile()
        stored_profile = None if profile is None else msgspec.json.encode(profile)
        if old is None:
            cid = str(ULID())
            try:
                conn.execute(
                    f"INSERT INTO customers ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                    (cid, namespace, inp.key, inp.name, inp.timezone, meta, now, now, stored_profile),
                )
            except sqlite3.IntegrityError:
                raise customer_exists(inp.key) from None
            created = now
        else:
            cid, created = old.id, old.created_us
            if inp.key != old.key:
                self._rekey(conn, namespace, old, inp.key)
            conn.execute(
                "UPDATE customers SET name = ?, timezone = ?, metadata = ?, updated_us = ?, profile = ? WHERE id = ?",
                (inp.name, inp.timezone, meta, now, stored_profile, cid),
            )
            conn.execute("DELETE FROM customer_subjects WHERE customer = ?", (cid,))
        conn.executemany("INSERT INTO customer_subjects VALUES (?,?,?)", [(namespace, s, cid) for s in subjects])
        customer = Customer(
            cid, namespace, inp.key, inp.name, subjects, inp.timezone, inp.metadata, created, now, profile
        )
        usage = customer.usage_subjects  # its subject keys and its key: what ingest counts as known
        owned = self._state.customer_subjects.setdefault(namespace, set())  # rollback invalidates the state
        gone = set(() if old is None else old.usage_subjects) - set(usage)
        owned.difference_update(gone)
        owned.update(usage)
        owned.update(_still_owned(conn, namespace, gone))
        accepted, rejected = self._release(conn, namespace, usage)
        return Saved(customer, accepted, rejected)

    def _rekey(self, conn: sqlite3.Connection, namespace: str, old: Customer, key: str) -> None:
        """OpenMeter's key change: the new key is no other live customer's key or id, and no
        subject another customer claims."""
        row = conn.execute(
            "SELECT key FROM customers WHERE namespace = ? AND id = ? AND id <> ? AND deleted_us IS NULL",
            (namespace, key, old.id),
        ).fetchone()
        if row is not None:
            raise key_is_an_id(key, row[0])
        self._check_claims(conn, namespace, [key], old.id)
        try:
            conn.execute("UPDATE customers SET key = ? WHERE id = ?", (key, old.id))
        except sqlite3.IntegrityError:
            raise customer_exists(key) from None
        rekey_references(conn, old.id, key)

    def _check_claims(self, conn: sqlite3.Connection, namespace: str, subjects: Sequence[str], own: str | None) -> None:
        for subject in subjects:
            row = conn.execute(
                "SELECT c.key FROM customer_subjects s JOIN customers c ON c.id = s.customer"
                " WHERE s.namespace = ? AND s.subject = ? AND s.customer IS NOT ?",
                (namespace, subject, own),
            ).fetchone()
            if row is not None:
                raise subject_claimed(subject, row[0])

    def _release(self, conn: sqlite3.Connection, namespace: str, subjects: Sequence[str]) -> tuple[int, int]:
        """Move the subjects' quarantined events into the ledger, in arrival order."""
        marks = ",".join("?" * len(subjects))
        rows = conn.execute(
            "SELECT id, source, event_id, type, subject, time_us, digest, raw FROM quarantine"
            f" WHERE namespace = ? AND subject IN ({marks}) ORDER BY id",
            (namespace, *subjects),
        ).fetchall()
        if not rows:
            return 0, 0
        conn.executemany("DELETE FROM quarantine WHERE id = ?", [(r[0],) for r in rows])
        events = [
            Event(namespace, source, id_, type_, subject, time_us, event_data(raw), raw, digest)
            for _, source, id_, type_, subject, time_us, digest, raw in rows
        ]
        return Appender(self._state, conn, self._now_us()).release(events)

    # -- reads ------------------------------------------------------------------------------

    def get(self, namespace: str, key_or_id: str, *, include_deleted: bool = False) -> Customer:
        conn = self._db.reader()
        try:
            return self._get(conn, namespace, key_or_id)
        except NotFound:
            if not include_deleted:
                raise
            row = conn.execute(
                f"SELECT {_READ} FROM customers WHERE namespace = ? AND id = ? AND deleted_us IS NOT NULL",
                (namespace, key_or_id),
            ).fetchone()
            if row is None:
                raise
            return _customer_of(row, ())

    def list(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Customer]:
        """Every live customer of ``namespace`` (and every deleted one with ``include_deleted``):
        two queries, whatever their number (the dashboard lists thousands)."""
        conn = self._db.reader()
        rows = conn.execute(
            f"SELECT {_READ} FROM customers WHERE namespace = ? AND (? OR deleted_us IS NULL) ORDER BY key, id",
            (namespace, include_deleted),
        ).fetchall()
        subjects: dict[str, builtins.list[str]] = {}
        for cid, subject in conn.execute(
            "SELECT s.customer, s.subject FROM customer_subjects s JOIN customers c ON c.id = s.customer"
            " WHERE c.namespace = ? AND c.deleted_us IS NULL ORDER BY s.subject",
            (namespace,),
        ):
            subjects.setdefault(cid, []).append(subject)
        return [_customer_of(row, tuple(subjects.get(row[0], ()))) for row in rows]

    def by_subject(self, namespace: str, subject: str) -> Customer | None:
        conn = self._db.reader()
        row = conn.execute(
            f"SELECT {_READ} FROM customers WHERE id ="
            " (SELECT customer FROM customer_subjects WHERE namespace = ? AND subject = ?)",
            (namespace, subject),
        ).fetchone()
        return None if row is None else self._customer(conn, row)

    def policy(self, namespace: str) -> UnknownSubjects | None:
        row = (
            self._db.reader()
            .execute("SELECT unknown_subjects FROM namespace_settings WHERE namespace = ?", (namespace,))
            .fetchone()
        )
        return None if row is None else UnknownSubjects(row[0])

    def quarantined(
        self, namespace: str, subject: str | None, *, limit: int, after_id: int
    ) -> builtins.list[Quarantined]:
        rows = self._db.reader().execute(
            "SELECT id, source, event_id, type, subject, time_us, received_us, raw FROM quarantine"
            " WHERE namespace = ? AND (? IS NULL OR subject = ?) AND id > ? ORDER BY id LIMIT ?",
            (namespace, subject, subject, after_id, limit),
        )
        return [Quarantined(*row) for row in rows]

    def quarantine_size(self) -> int:
        return int(self._db.reader().execute("SELECT count(*) FROM quarantine").fetchone()[0])

    def _get(self, conn: sqlite3.Connection, namespace: str, key_or_id: str) -> Customer:
        row = conn.execute(
            f"SELECT {_READ} FROM customers WHERE namespace = ? AND deleted_us IS NULL AND (key = ? OR id = ?)",
            (namespace, key_or_id, key_or_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"no customer {key_or_id!r}", code="customer_not_found")
        return self._customer(conn, row)

    def _customer(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> Customer:
        return _customer(conn, row)


def load_all(conn: sqlite3.Connection, only: str | None = None) -> builtins.list[Customer]:
    """Every live customer of every namespace, or the one with id ``only`` (for the live
    counters' index), in two queries."""
    subjects: dict[str, builtins.list[str]] = {}
    for cid, subject in conn.execute(
        "SELECT customer, subject FROM customer_subjects WHERE ? IS NULL OR customer = ? ORDER BY customer, subject",
        (only, only),
    ):
        subjects.setdefault(cid, []).append(subject)
    out = []
    for row in conn.execute(
        f"SELECT {_COLUMNS} FROM customers WHERE deleted_us IS NULL AND (? IS NULL OR id = ?)", (only, only)
    ):
        cid, namespace, key, name, tz, meta, created, updated, profile = row
        metadata = None if meta is None else msgspec.json.decode(meta)
        extra = None if profile is None else msgspec.json.decode(profile)
        out.append(
            Customer(cid, namespace, key, name, tuple(subjects.get(cid, ())), tz, metadata, created, updated, extra)
        )
    return out


def _customer(conn: sqlite3.Connection, row: tuple[Any, ...]) -> Customer:
    sql = "SELECT subject FROM customer_subjects WHERE customer = ? ORDER BY subject"
    return _customer_of(row, tuple(s for (s,) in conn.execute(sql, (row[0],))))


def _customer_of(row: tuple[Any, ...], subjects: tuple[str, ...]) -> Customer:
    """A customer from a row of ``_READ`` and, when it is live, its claimed ``subjects``."""
    cid, namespace, key, name, tz, meta, created, updated, profile, deleted, deleted_subjects = row
    metadata = None if meta is None else msgspec.json.decode(meta)
    extra = None if profile is None else msgspec.json.decode(profile)
    if deleted is not None:
        subjects = () if deleted_subjects is None else tuple(msgspec.json.decode(deleted_subjects))
    return Customer(cid, namespace, key, name, subjects, tz, metadata, created, updated, extra, deleted)


def _still_owned(conn: sqlite3.Connection, namespace: str, strings: set[str]) -> list[str]:
    """Of ``strings`` a save stopped claiming, those another live customer still has as a
    subject key or as its key."""
    if not strings:
        return []
    marks = ",".join("?" * len(strings))
    rows = conn.execute(
        f"SELECT subject FROM customer_subjects WHERE namespace = ? AND subject IN ({marks})"
        f" UNION SELECT key FROM customers WHERE namespace = ? AND key IN ({marks}) AND deleted_us IS NULL",
        (namespace, *strings, namespace, *strings),
    ).fetchall()
    return [r[0] for r in rows]
