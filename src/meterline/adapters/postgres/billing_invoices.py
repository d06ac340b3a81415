"""Finalized invoices, voids, billed-window snapshots and credit grants in PostgreSQL.

A finalizing unit of work is one transaction that first takes the billing advisory lock, so
finalizations from every node run one at a time, as the embedded store's single writer runs
them: every write of it (invoice row, number counter, window snapshots, credit burns,
``billed_through_us``, ``replaced_by``) commits together or not at all. The invoice row is
never updated or deleted (triggers refuse it, also to anyone with SQL access); a void is a row
in ``invoice_voids``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from meterline.adapters.postgres.database import Connection, PgDatabase, is_unique_violation, lock
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
_LIVE = (
    "NOT EXISTS (SELECT 1 FROM invoice_voids v WHERE v.invoice = b.invoice)"
    " AND NOT EXISTS (SELECT 1 FROM invoice_voids v WHERE v.invoice = b.origin)"
)


class PgInvoices:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def get(self, namespace: str, number: str) -> InvoiceRecord:
        with self._db.tx() as conn:
            row = conn.execute(_RECORD + " WHERE i.namespace = %s AND i.number = %s", (namespace, number)).fetchone()
        if row is None:
            raise NotFound(f"no invoice {number!r}", code="invoice_not_found")
        return _record(row)

    def list(
        self,
        namespace: str,
        *,
        customer_id: str | None = None,
        period_from_us: int | None = None,
        period_to_us: int | None = None,
    ) -> builtins.list[InvoiceRecord]:
        with self._db.tx() as conn:
            rows = conn.execute(
                _RECORD + " WHERE i.namespace = %(ns)s AND (%(c)s::text IS NULL OR i.customer = %(c)s)"
                " AND (%(from)s::bigint IS NULL OR i.period_start_us >= %(from)s)"
                " AND (%(to)s::bigint IS NULL OR i.period_start_us < %(to)s) ORDER BY i.id",
                {"ns": namespace, "c": customer_id, "from": period_from_us, "to": period_to_us},
            ).fetchall()
        return [_record(row) for row in rows]

    def billed(self, namespace: str, customer_ids: Collection[str], since_us: int) -> dict[str, builtins.list[Billed]]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT b.id, b.customer, b.subscription, b.window_start_us, b.origin, o.number, b.body, s.issued_us"
                " FROM billed_windows b JOIN invoices o ON o.id = b.origin JOIN invoices s ON s.id = b.invoice"
                " WHERE b.namespace = %s AND b.window_end_us > %s AND b.customer = ANY(%s) AND " + _LIVE + ""
                " ORDER BY b.id",
                (namespace, since_us, list(customer_ids)),
            ).fetchall()
        latest: dict[tuple[str, int], Billed] = {}
        for row in rows:
            latest[(row[2], row[3])] = _billed(row)
        out: dict[str, builtins.list[Billed]] = {}
        for billed in latest.values():
            out.setdefault(billed.customer_id, []).append(billed)
        return out

    def first_billed(
        self, namespace: str, customer_id: str, subscription: str, after_us: int, until_us: int
    ) -> builtins.list[str]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT i.number FROM billed_windows b JOIN invoices i ON i.id = b.invoice"
                " WHERE b.namespace = %s AND b.customer = %s AND b.subscription = %s AND b.invoice = b.origin"
                " AND b.window_end_us > %s AND b.window_end_us <= %s"
                " AND NOT EXISTS (SELECT 1 FROM invoice_voids v WHERE v.invoice = b.invoice) ORDER BY b.invoice",
                (namespace, customer_id, subscription, after_us, until_us),
            ).fetchall()
        return [number for (number,) in rows]

    def void(self, namespace: str, number: str, reason: str, at_us: int) -> None:
        try:
            with self._db.tx() as conn:
                row = conn.execute(
                    "SELECT id, customer FROM invoices WHERE namespace = %s AND number = %s", (namespace, number)
                ).fetchone()
                if row is None:
                    raise NotFound(f"no invoice {number!r}", code="invoice_not_found")
                # the primary key of invoice_voids lets one void win when two nodes race
                conn.execute("INSERT INTO invoice_voids VALUES (%s,%s,%s,NULL)", (row[0], reason, at_us))
                burns = conn.execute(
                    "SELECT grant_key, amount FROM credit_burns WHERE invoice = %s ORDER BY seq", (row[0],)
                ).fetchall()
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO credit_burns (namespace, customer, grant_key, invoice, amount)"
                        " VALUES (%s,%s,%s,%s,%s)",
                        [(namespace, row[1], g, row[0], str(-Decimal(a))) for g, a in burns],
                    )
        except Exception as exc:
            if is_unique_violation(exc):
                raise Conflict(f"invoice {number!r} is already void", code="invoice_voided") from None
            raise


class PgInvoiceUnitOfWork:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def run(self, work: Callable[[InvoiceTransaction], T]) -> T:
        with self._db.tx() as conn:
            lock(conn, "billing-finalize")
            return work(_Transaction(conn))


class _Transaction:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        row = self._conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def invoice_for(self, subscription: str, period_start_us: int, replaces: str) -> str | None:
        number = self._one(
            "SELECT number FROM invoices WHERE subscription = %s AND period_start_us = %s AND replaces = %s",
            (subscription, period_start_us, replaces),
        )
        return None if number is None else str(number)

    def latest_snapshot(self, subscription: str, window_start_us: int) -> int | None:
        found = self._one(
            "SELECT max(b.id) FROM billed_windows b WHERE b.subscription = %s AND b.window_start_us = %s AND " + _LIVE,
            (subscription, window_start_us),
        )
        return None if found is None else int(found)

    def billed_through(self, subscription: str) -> int | None:
        found = self._one("SELECT billed_through_us FROM subscriptions WHERE id = %s", (subscription,))
        return None if found is None else int(found)

    def next_number(self, namespace: str) -> int:
        return int(
            self._one(
                "INSERT INTO invoice_numbers VALUES (%s, 1)"
                " ON CONFLICT (namespace) DO UPDATE SET last = invoice_numbers.last + 1 RETURNING last",
                (namespace,),
            )
        )

    def balances(self, namespace: str, customer_id: str) -> builtins.list[tuple[GrantTerms, Decimal]]:
        return _balances(self._conn, namespace, customer_id)

    def period_invoices(self, subscription: str, period_start_us: int) -> builtins.list[str]:
        rows = self._conn.execute(
            "SELECT number FROM invoices WHERE subscription = %s AND period_start_us = %s ORDER BY id",
            (subscription, period_start_us),
        ).fetchall()
        return [number for (number,) in rows]

    def live_after(self, namespace: str, customer_id: str, number: str) -> builtins.list[tuple[str, bytes]]:
        rows = self._conn.execute(
            "SELECT i.number, i.body FROM invoices i WHERE i.namespace = %s AND i.customer = %s"
            " AND i.id > (SELECT id FROM invoices WHERE namespace = %s AND number = %s)"
            " AND NOT EXISTS (SELECT 1 FROM invoice_voids v WHERE v.invoice = i.id) ORDER BY i.id",
            (namespace, customer_id, namespace, number),
        ).fetchall()
        return [(n, bytes(body)) for n, body in rows]

    def store(self, inv: NewInvoice) -> None:
        conn = self._conn
        invoice_id = self._one(
            "INSERT INTO invoices (namespace, number, customer, subscription, period_start_us, period_end_us,"
            " replaces, issued_us, body) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
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
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO billed_windows (namespace, customer, subscription, window_start_us, window_end_us,"
                " invoice, origin, body) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
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
            cur.executemany(
                "INSERT INTO credit_burns (namespace, customer, grant_key, invoice, amount) VALUES (%s,%s,%s,%s,%s)",
                [(inv.namespace, inv.customer_id, key, invoice_id, str(amount)) for key, amount in inv.burns],
            )
        if inv.billed_through_us is not None:
            conn.execute(
                "UPDATE subscriptions SET billed_through_us = greatest(billed_through_us, %s) WHERE id = %s",
                (inv.billed_through_us, inv.subscription),
            )
        if inv.replaces:
            conn.execute(
                "UPDATE invoice_voids SET replaced_by = %s WHERE invoice ="
                " (SELECT id FROM invoices WHERE namespace = %s AND number = %s)",
                (inv.number, inv.namespace, inv.replaces),
            )


class PgCredits:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def add(self, namespace: str, customer_id: str, grant: GrantTerms, at_us: int) -> None:
        try:
            with self._db.tx() as conn:
                conn.execute(
                    "INSERT INTO credit_grants VALUES (%s,%s,%s,%s,%s,NULL)",
                    (namespace, customer_id, grant.key, _encode(grant), at_us),
                )
        except Exception as exc:
            if is_unique_violation(exc):
                raise Conflict(f"credit grant {grant.key!r} already exists", code="credit_grant_exists") from None
            raise

    def void(self, namespace: str, customer_id: str, key: str, at_us: int) -> None:
        with self._db.tx() as conn:
            cur = conn.execute(
                "UPDATE credit_grants SET voided_us = %s WHERE namespace = %s AND customer = %s AND key = %s"
                " AND voided_us IS NULL",
                (at_us, namespace, customer_id, key),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no live credit grant {key!r}", code="credit_grant_not_found")

    def balances(self, namespace: str, customer_id: str) -> builtins.list[tuple[GrantTerms, Decimal]]:
        with self._db.tx() as conn:
            return _balances(conn, namespace, customer_id)


def _record(row: tuple[Any, ...]) -> InvoiceRecord:
    number, customer, subscription, start, end, issued, replaces, body, reason, voided, replaced_by = row
    return InvoiceRecord(number, customer, subscription, start, end, issued, replaces, bytes(body), reason, voided,
                         replaced_by)  # fmt: skip


def _billed(row: tuple[Any, ...]) -> Billed:
    id_, customer, subscription, start_us, origin, number, body, snapshot_us = row
    window = _window.decode(body)
    return Billed(id_, customer, subscription, start_us, origin, number, window, window, int(snapshot_us))


def _balances(conn: Connection, namespace: str, customer_id: str) -> builtins.list[tuple[GrantTerms, Decimal]]:
    burned: dict[str, list[Decimal]] = {}
    for key, amount in conn.execute(
        "SELECT grant_key, amount FROM credit_burns WHERE namespace = %s AND customer = %s ORDER BY seq",
        (namespace, customer_id),
    ).fetchall():
        burned.setdefault(key, []).append(Decimal(amount))
    rows = conn.execute(
        "SELECT body FROM credit_grants WHERE namespace = %s AND customer = %s AND voided_us IS NULL ORDER BY key",
        (namespace, customer_id),
    ).fetchall()
    out = []
    for (body,) in rows:
        g = _grant.decode(body)
        out.append((g, sub(g.amount, total(burned.get(g.key, [])))))
    return out
