"""Finalized invoices, voids, billed-window snapshots and credit grants in SQLite.

Finalizing one invoice is one savepoint inside a writer transaction, in this order:
1. skip it if its (subscription, period, replaces) key exists (a re-run changes nothing);
2. skip it if an adjustment it carries was computed from a snapshot that is no longer the
   latest (another run got there first; the next run recomputes);
3. take the namespace's next number (gap-free: the counter rolls back with the savepoint);
4. burn credits, insert the invoice bytes, its window snapshots and burns, and move the
   subscription's ``billed_through_us`` -- all committed together or not at all.
The invoice row is never updated (triggers refuse it); a void is a row in ``invoice_voids``.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from meterline.adapters.sqlite.billing_model import Billed, GrantInput, InvoiceRecord, Pending, Settings, load_billed
from meterline.adapters.sqlite.database import Database
from meterline.domain.billing import Adjustment, CreditGrant
from meterline.domain.billing.adjustments import reversal
from meterline.domain.billing.documents import assemble, decode_invoice, encode_invoice, number_text
from meterline.domain.billing.money import ZERO, sub, total
from meterline.domain.clock import from_us, to_us
from meterline.domain.errors import Conflict, NotFound

_grant = msgspec.json.Decoder(GrantInput)
_encode = msgspec.json.Encoder().encode
_RECORD = (
    "SELECT i.number, i.customer, i.subscription, i.period_start_us, i.period_end_us, i.issued_us, i.replaces,"
    " i.body, v.reason, v.voided_us, v.replaced_by FROM invoices i LEFT JOIN invoice_voids v ON v.invoice = i.id"
)
_EPOCH = from_us(0)
_LIVE = "invoice NOT IN (SELECT invoice FROM invoice_voids) AND origin NOT IN (SELECT invoice FROM invoice_voids)"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What finalizing one pending invoice did: ``created``, ``exists`` or ``stale``."""

    status: str
    number: str | None


class SqliteInvoices:
    def __init__(self, db: Database, now_us: Callable[[], int]) -> None:
        self._db = db
        self._now_us = now_us

    # -- finalize ---------------------------------------------------------------------------

    def finalize(self, items: Sequence[Pending], settings: Settings) -> builtins.list[Outcome]:
        """Finalize ``items`` in one writer transaction (see the module docstring)."""

        def task(conn: sqlite3.Connection) -> builtins.list[Outcome]:
            namespaces = {item.namespace for item in items}
            granted = {
                (ns, c)
                for ns in namespaces
                for (c,) in conn.execute("SELECT DISTINCT customer FROM credit_grants WHERE namespace = ?", (ns,))
            }
            return [self._one(conn, item, settings, (item.namespace, item.customer_id) in granted) for item in items]

        return self._db.writer.call(task)

    def _one(self, conn: sqlite3.Connection, item: Pending, settings: Settings, granted: bool) -> Outcome:
        key = (item.parties.subscription, item.window_key, item.parties.replaces or "")
        row = conn.execute(
            "SELECT number FROM invoices WHERE subscription = ? AND period_start_us = ? AND replaces = ?", key
        ).fetchone()
        if row is not None:
            return Outcome("exists", row[0])
        if any(_latest_id(conn, b.subscription, b.window_start_us) != b.id for _, b in item.adjustments):
            return Outcome("stale", None)
        if item.billed_through_us is not None and _billed_through(conn, key[0]) != item.windows[0][1].window.start_us:
            return Outcome("stale", None)  # an earlier window of this subscription is not finalized
        n = conn.execute(
            "INSERT INTO invoice_numbers VALUES (?, 1) ON CONFLICT (namespace) DO UPDATE SET last = last + 1"
            " RETURNING last",
            (item.namespace,),
        ).fetchone()[0]
        number = number_text(settings.prefix, n, settings.digits)
        grants = _grants(conn, item.namespace, item.customer_id) if granted else []
        adjustments = [a for a, _ in item.adjustments] + _charged_elsewhere(conn, item.namespace, key)
        invoice, _ = assemble(number, item.parties, item.windows, adjustments, grants, item.issued_at)
        cur = conn.execute(
            "INSERT INTO invoices (namespace, number, customer, subscription, period_start_us, period_end_us,"
            " replaces, issued_us, body) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
            (
                item.namespace,
                number,
                item.customer_id,
                *key[:2],
                item.parties.period.end_us,
                key[2],
                to_us(invoice.issued_at),  # the stored invoice's own time, never a second reading
                encode_invoice(invoice),
            ),
        )
        invoice_id = int(cur.fetchone()[0])
        self._snapshots(conn, item, invoice_id)
        conn.executemany(
            "INSERT INTO credit_burns VALUES (?,?,?,?,?)",
            [
                (item.namespace, item.customer_id, line.credit_grant, invoice_id, str(-line.amount))
                for line in invoice.credits
            ],
        )
        if item.billed_through_us is not None:
            conn.execute(
                "UPDATE subscriptions SET billed_through_us = max(billed_through_us, ?) WHERE id = ?",
                (item.billed_through_us, item.parties.subscription),
            )
        if item.parties.replaces is not None:
            conn.execute(
                "UPDATE invoice_voids SET replaced_by = ? WHERE invoice ="
                " (SELECT id FROM invoices WHERE namespace = ? AND number = ?)",
                (number, item.namespace, item.parties.replaces),
            )
        return Outcome("created", number)

    def _snapshots(self, conn: sqlite3.Connection, item: Pending, invoice_id: int) -> None:
        rows = [
            (
                item.namespace,
                item.customer_id,
                item.parties.subscription,
                w.window.start_us,
                w.window.end_us,
                invoice_id,
                invoice_id,
                _encode(w),
            )
            for _, w in item.windows
        ]
        rows += [
            (
                item.namespace,
                item.customer_id,
                b.subscription,
                b.window_start_us,
                b.window.window.end_us,
                invoice_id,
                b.origin_id,
                _encode(b.current),
            )
            for _, b in item.adjustments
        ]
        conn.executemany("INSERT INTO billed_windows VALUES (NULL,?,?,?,?,?,?,?,?)", rows)

    # -- reads ------------------------------------------------------------------------------

    def get(self, namespace: str, number: str) -> InvoiceRecord:
        row = self._db.reader().execute(f"{_RECORD} WHERE i.namespace = ? AND i.number = ?", (namespace, number))
        found = row.fetchone()
        if found is None:
            raise NotFound(f"no invoice {number!r}", code="invoice_not_found")
        return InvoiceRecord(*found)

    def list(
        self,
        namespace: str,
        *,
        customer_id: str | None = None,
        period_from_us: int | None = None,
        period_to_us: int | None = None,
    ) -> builtins.list[InvoiceRecord]:
        """Invoices whose period starts in ``[period_from_us, period_to_us)``, by number."""
        rows = self._db.reader().execute(
            f"{_RECORD} WHERE i.namespace = ? AND (? IS NULL OR i.customer = ?)"
            " AND (? IS NULL OR i.period_start_us >= ?) AND (? IS NULL OR i.period_start_us < ?) ORDER BY i.id",
            (namespace, customer_id, customer_id, period_from_us, period_from_us, period_to_us, period_to_us),
        )
        return [InvoiceRecord(*row) for row in rows]

    def billed(self, namespace: str, customer_ids: set[str], since_us: int) -> dict[str, builtins.list[Billed]]:
        """Per customer, the latest live snapshot of every window ending after ``since_us``."""
        rows = self._db.reader().execute(
            "SELECT b.id, b.customer, b.subscription, b.window_start_us, b.origin, o.number, b.body"
            " FROM billed_windows b JOIN invoices o ON o.id = b.origin WHERE b.namespace = ? AND b.window_end_us > ?"
            " AND b.invoice NOT IN (SELECT invoice FROM invoice_voids)"
            " AND b.origin NOT IN (SELECT invoice FROM invoice_voids) ORDER BY b.id",
            (namespace, since_us),
        )
        latest: dict[tuple[str, int], Billed] = {}
        for row in rows:
            if row[1] in customer_ids:
                latest[(row[2], row[3])] = load_billed(row)
        out: dict[str, builtins.list[Billed]] = {}
        for billed in latest.values():
            out.setdefault(billed.customer_id, []).append(billed)
        return out

    # -- voids ------------------------------------------------------------------------------

    def void(self, namespace: str, number: str, reason: str) -> InvoiceRecord:
        """Mark ``number`` void and give back the credits it burned."""

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
            conn.execute("INSERT INTO invoice_voids VALUES (?,?,?,NULL)", (row[0], reason, self._now_us()))
            burns = conn.execute("SELECT grant_key, amount FROM credit_burns WHERE invoice = ?", (row[0],)).fetchall()
            conn.executemany(
                "INSERT INTO credit_burns VALUES (?,?,?,?,?)",
                [(namespace, row[1], g, row[0], str(-Decimal(a))) for g, a in burns],
            )

        self._db.writer.call(task)
        return self.get(namespace, number)

    # -- credits ----------------------------------------------------------------------------

    def add_grant(self, namespace: str, customer_id: str, grant: GrantInput) -> None:
        def task(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO credit_grants VALUES (?,?,?,?,?,NULL)",
                    (namespace, customer_id, grant.key, _encode(grant), self._now_us()),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"credit grant {grant.key!r} already exists", code="credit_grant_exists") from None

        self._db.writer.call(task)

    def void_grant(self, namespace: str, customer_id: str, key: str) -> None:
        def task(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE credit_grants SET voided_us = ? WHERE namespace = ? AND customer = ? AND key = ?"
                " AND voided_us IS NULL",
                (self._now_us(), namespace, customer_id, key),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no live credit grant {key!r}", code="credit_grant_not_found")

        self._db.writer.call(task)

    def grants(self, namespace: str, customer_id: str) -> builtins.list[tuple[GrantInput, Decimal]]:
        """Every live grant of a customer with its remaining balance."""
        return _balances(self._db.reader(), namespace, customer_id)


def _latest_id(conn: sqlite3.Connection, subscription: str, window_start_us: int) -> int | None:
    row = conn.execute(
        f"SELECT max(id) FROM billed_windows WHERE subscription = ? AND window_start_us = ? AND {_LIVE}",
        (subscription, window_start_us),
    ).fetchone()
    return None if row[0] is None else int(row[0])


def _charged_elsewhere(conn: sqlite3.Connection, namespace: str, key: tuple[str, int, str]) -> list[Adjustment]:
    """For a replacement (``key``: subscription, period start, the voided invoice it replaces):
    the adjustment lines live invoices charged against any earlier invoice of that period,
    taken back (``billing.adjustments.reversal``); the replacement prices the period in full."""
    if not key[2]:
        return []
    chain = conn.execute(
        "SELECT id, number, customer FROM invoices WHERE subscription = ? AND period_start_us = ? ORDER BY id",
        key[:2],
    ).fetchall()
    if not chain:
        return []
    numbers = {number for _, number, _ in chain}
    later = conn.execute(
        "SELECT number, body FROM invoices WHERE namespace = ? AND customer = ? AND id > ?"
        " AND id NOT IN (SELECT invoice FROM invoice_voids) ORDER BY id",
        (namespace, chain[0][2], chain[0][0]),
    )
    out = []
    for number, body in later:
        lines = [ln for ln in decode_invoice(body).lines if ln.kind == "adjustment" and ln.references in numbers]
        if lines:
            out.append(reversal(lines, number))
    return out


def _billed_through(conn: sqlite3.Connection, subscription: str) -> int | None:
    row = conn.execute("SELECT billed_through_us FROM subscriptions WHERE id = ?", (subscription,)).fetchone()
    return None if row is None else int(row[0])


def _balances(conn: sqlite3.Connection, namespace: str, customer_id: str) -> builtins.list[tuple[GrantInput, Decimal]]:
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


def _grants(conn: sqlite3.Connection, namespace: str, customer_id: str) -> builtins.list[CreditGrant]:
    return [
        CreditGrant(g.key, g.currency, balance, g.effective_at or _EPOCH, g.priority, g.expires_at)
        for g, balance in _balances(conn, namespace, customer_id)
        if balance > ZERO
    ]


def live_grants(conn: sqlite3.Connection, namespace: str, customer_id: str) -> builtins.list[CreditGrant]:
    """The grants a new invoice of this customer may burn (for previews)."""
    return _grants(conn, namespace, customer_id)
