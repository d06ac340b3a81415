"""Finalized invoices, voids, billed-window snapshots and credit grants in SQLite.

A finalizing unit of work is one writer task: every write of it (invoice row, number counter,
window snapshots, credit burns, ``billed_through_us``, ``replaced_by``) commits together or
is rolled back with the task's savepoint. The invoice row is never updated (triggers refuse
it); a void is a row in ``invoice_voids``.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Collection
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from meterline.adapters.sqlite.database import Database
from meterline.domain.billing.credits import GrantTerms
from meterline.domain.billing.documents import InvoiceWindow
from meterline.domain.billing.money import sub, total
from meterline.domain.billing.records import Billed, InvoiceRecord, NewInvoice
from meterline.domain.errors import Conflict, NotFound
from meterline.ports.billing_invoices import InvoiceTransaction

T = TypeVar("T")
_grant = msgspec.json.Decoder(GrantTerms)
_window = msgspec.json.Decoder(InvoiceWindow)
_encode = msgspec.json.Encoder().encode
_RECORD = (
    "SELECT i.number, i.customer, i.subscription, i.period_start_us, i.period_end_us, i.issued_us, i.replaces,"
    " i.body, v.reason, v.voided_us, v.replaced_by FROM invoices i LEFT JOIN invoice_voids v ON v.invoice = i.id"
)
_LIVE = "invoice NOT IN (SELECT invoice FROM invoice_voids) AND origin NOT IN (SELECT invoice FROM invoice_voids)"


class SqliteInvoices:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, namespace: str, number: str) -> InvoiceRecord:
        found = _record(self._db.reader(), namespace, number)
        if found is None:
            raise NotFound(f"no invoice {number!r}", code="invoice_not_found")
        return found

    def list(
        self,
        namespace: str,
        *,
        customer_id: str | None = None,
        period_from_us: int | None = None,
        period_to_us: int | None = None,
    ) -> builtins.list[InvoiceRecord]:
        rows = self._db.reader().execute(
            f"{_RECORD} WHERE i.namespace = ? AND (? IS NULL OR i.customer = ?)"
            " AND (? IS NULL OR i.period_start_us >= ?) AND (? IS NULL OR i.period_start_us < ?) ORDER BY i.id",
            (namespace, customer_id, customer_id, period_from_us, period_from_us, period_to_us, period_to_us),
        )
        return [InvoiceRecord(*row) for row in rows]

    def billed(self, namespace: str, customer_ids: Collection[str], since_us: int) -> dict[str, builtins.list[Billed]]:
        rows = self._db.reader().execute(
            "SELECT b.id, b.customer, b.subscription, b.window_start_us, b.origin, o.number, b.body, s.issued_us"
            " FROM billed_windows b JOIN invoices o ON o.id = b.origin JOIN invoices s ON s.id = b.invoice"
            " WHERE b.namespace = ? AND b.window_end_us > ?"
            " AND b.invoice NOT IN (SELECT invoice FROM invoice_voids)"
            " AND b.origin NOT IN (SELECT invoice FROM invoice_voids) ORDER BY b.id",
            (namespace, since_us),
        )
        wanted = set(customer_ids)
        latest: dict[tuple[str, int], Billed] = {}
        for row in rows:
            if row[1] in wanted:
                latest[(row[2], row[3])] = _billed(row)
        out: dict[str, builtins.list[Billed]] = {}
        for billed in latest.values():
            out.setdefault(billed.customer_id, []).append(billed)
        return out

    def first_billed(
        self, namespace: str, customer_id: str, subscription: str, after_us: int, until_us: int
    ) -> builtins.list[str]:
        rows = self._db.reader().execute(
            "SELECT i.number FROM billed_windows b JOIN invoices i ON i.id = b.invoice"
            " WHERE b.namespace = ? AND b.customer = ? AND b.subscription = ? AND b.invoice = b.origin"
            " AND b.window_end_us > ? AND b.window_end_us <= ?"
            " AND b.invoice NOT IN (SELECT invoice FROM invoice_voids) ORDER BY b.invoice",
            (namespace, customer_id, subscription, after_us, until_us),
        )
        return [number for (number,) in rows]

    def void(self, namespace: str, number: str, reason: str, at_us: int) -> None:
        def task(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT i.id, i.customer, v.invoice FROM invoices i LEFT JOIN invoice_voids v ON v.invoice = i.id"
                " WHERE i.namespace = ? AND i.number = ?",
                (namespace, number),
            ).fetchone()
            if row is None:
                raise NotFound(f"no invoice {number!r}", code="invoice_not_found")
            if row[2] is not None:
                raise Conflict(f"invoice {number!r} is already void", code="invoice_voided")
            conn.execute("INSERT INTO invoice_voids VALUES (?,?,?,NULL)", (row[0], reason, at_us))
            burns = conn.execute("SELECT grant_key, amount FROM credit_burns WHERE invoice = ?", (row[0],)).fetchall()
            conn.executemany(
                "INSERT INTO credit_burns VALUES (?,?,?,?,?)",
                [(namespace, row[1], g, row[0], str(-Decimal(a))) for g, a in burns],
            )

        self._db.writer.call(task)


class SqliteInvoiceUnitOfWork:
    def __init__(self, db: Database) -> None:
        self._db = db

    def run(self, work: Callable[[InvoiceTransaction], T]) -> T:
        return self._db.writer.call(lambda conn: work(_Transaction(conn)))


class _Transaction:
    """One finalizing writer task. Customers without any credit grant are known once per
    namespace, so their invoices read no balances."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._granted: dict[str, set[str]] = {}

    def invoice_for(self, subscription: str, period_start_us: int, replaces: str) -> str | None:
        row = self._conn.execute(
            "SELECT number FROM invoices WHERE subscription = ? AND period_start_us = ? AND replaces = ?",
            (subscription, period_start_us, replaces),
        ).fetchone()
        return None if row is None else str(row[0])

    def latest_snapshot(self, subscription: str, window_start_us: int) -> int | None:
        row = self._conn.execute(
            f"SELECT max(id) FROM billed_windows WHERE subscription = ? AND window_start_us = ? AND {_LIVE}",
            (subscription, window_start_us),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def billed_through(self, subscription: str) -> int | None:
        row = self._conn.execute("SELECT billed_through_us FROM subscriptions WHERE id = ?", (subscription,)).fetchone()
        return None if row is None else int(row[0])

    def next_number(self, namespace: str) -> int:
        row = self._conn.execute(
            "INSERT INTO invoice_numbers VALUES (?, 1) ON CONFLICT (namespace) DO UPDATE SET last = last + 1"
            " RETURNING last",
            (namespace,),
        ).fetchone()
        return int(row[0])

    def balances(self, namespace: str, customer_id: str) -> builtins.list[tuple[GrantTerms, Decimal]]:
        if namespace not in self._granted:
            rows = self._conn.execute("SELECT DISTINCT customer FROM credit_grants WHERE namespace = ?", (namespace,))
            self._granted[namespace] = {c for (c,) in rows}
        if customer_id not in self._granted[namespace]:
            return []
        return _balances(self._conn, namespace, customer_id)

    def period_invoices(self, subscription: str, period_start_us: int) -> builtins.list[str]:
        rows = self._conn.execute(
            "SELECT number FROM invoices WHERE subscription = ? AND period_start_us = ? ORDER BY id",
            (subscription, period_start_us),
        )
        return [number for (number,) in rows]

    def live_after(self, namespace: str, customer_id: str, number: str) -> builtins.list[tuple[str, bytes]]:
        rows = self._conn.execute(
            "SELECT number, body FROM invoices WHERE namespace = ? AND customer = ?"
            " AND id > (SELECT id FROM invoices WHERE namespace = ? AND number = ?)"
            " AND id NOT IN (SELECT invoice FROM invoice_voids) ORDER BY id",
            (namespace, customer_id, namespace, number),
        )
        return [(n, bytes(body)) for n, body in rows]

    def store(self, inv: NewInvoice) -> None:
        conn = self._conn
        invoice_id = conn.execute(
            "INSERT INTO invoices (namespace, number, customer, subscription, period_start_us, period_end_us,"
            " replaces, issued_us, body) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
            (
                inv.namespace,
                inv.number,
                inv.customer_id,
                inv.subscription,
                inv.period_start_us,
                inv.period_end_us,
                inv.replaces,
                inv.issued_us,
                inv.body,
            ),
        ).fetchone()[0]
        conn.executemany(
            "INSERT INTO billed_windows VALUES (NULL,?,?,?,?,?,?,?,?)",
            [
                (
                    inv.namespace,
                    inv.customer_id,
                    s.subscription,
                    s.window.window.start_us,
                    s.window.window.end_us,
                    invoice_id,
                    invoice_id if s.origin_id is None else s.origin_id,
                    _encode(s.window),
                )
                for s in inv.snapshots
            ],
        )
        conn.executemany(
            "INSERT INTO credit_burns VALUES (?,?,?,?,?)",
            [(inv.namespace, inv.customer_id, key, invoice_id, str(amount)) for key, amount in inv.burns],
        )
        if inv.billed_through_us is not None:
            conn.execute(
                "UPDATE subscriptions SET billed_through_us = max(billed_through_us, ?) WHERE id = ?",
                (inv.billed_through_us, inv.subscription),
            )
        if inv.replaces:
            conn.execute(
                "UPDATE invoice_voids SET replaced_by = ? WHERE invoice ="
                " (SELECT id FROM invoices WHERE namespace = ? AND number = ?)",
                (inv.number, inv.namespace, inv.replaces),
            )


class SqliteCredits:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, namespace: str, customer_id: str, grant: GrantTerms, at_us: int) -> None:
        def task(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO credit_grants VALUES (?,?,?,?,?,NULL)",
                    (namespace, customer_id, grant.key, _encode(grant), at_us),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"credit grant {grant.key!r} already exists", code="credit_grant_exists") from None

        self._db.writer.call(task)

    def void(self, namespace: str, customer_id: str, key: str, at_us: int) -> None:
        def task(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE credit_grants SET voided_us = ? WHERE namespace = ? AND customer = ? AND key = ?"
                " AND voided_us IS NULL",
                (at_us, namespace, customer_id, key),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no live credit grant {key!r}", code="credit_grant_not_found")

        self._db.writer.call(task)

    def balances(self, namespace: str, customer_id: str) -> builtins.list[tuple[GrantTerms, Decimal]]:
        return _balances(self._db.reader(), namespace, customer_id)


def _record(conn: sqlite3.Connection, namespace: str, number: str) -> InvoiceRecord | None:
    row = conn.execute(f"{_RECORD} WHERE i.namespace = ? AND i.number = ?", (namespace, number)).fetchone()
    return None if row is None else InvoiceRecord(*row)


def _billed(row: tuple[Any, ...]) -> Billed:
    id_, customer, subscription, start_us, origin, number, body, snapshot_us = row
    window = _window.decode(body)
    return Billed(id_, customer, subscription, start_us, origin, number, window, window, snapshot_us)


def _balances(conn: sqlite3.Connection, namespace: str, customer_id: str) -> builtins.list[tuple[GrantTerms, Decimal]]:
    burned: dict[str, list[Decimal]] = {}
    for key, amount in conn.execute(
        "SELECT grant_key, amount FROM credit_burns WHERE namespace = ? AND customer = ?", (namespace, customer_id)
    ):
        burned.setdefault(key, []).append(Decimal(amount))
    rows = conn.execute(
        "SELECT body FROM credit_grants WHERE namespace = ? AND customer = ? AND voided_us IS NULL ORDER BY key",
        (namespace, customer_id),
    )
    out = []
    for (body,) in rows:
        g = _grant.decode(body)
        out.append((g, sub(g.amount, total(burned.get(g.key, [])))))
    return out
