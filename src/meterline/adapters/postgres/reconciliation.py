"""Reconciliation counts of scale mode kept in PostgreSQL (``ports.reconciliation``): what ingest
did not accept — dead letters not re-submitted, events still held in the quarantine — by
period of receipt, the namespaces with meters, and the finalized billing windows that say
where counted events stand with invoices. The log and the usage tables are ClickHouse's
(``adapters.clickhouse.reconciliation``)."""

from __future__ import annotations

from typing import Any

import msgspec

from meterline.adapters.postgres.database import PgDatabase
from meterline.domain.integrity.reconcile import Invoiced, Window
from meterline.ports.reconciliation import QUARTER

_US = 1_000_000
_Q_US = QUARTER * _US
_WINDOWS = (
    "SELECT b.customer, b.window_start_us, max(b.window_end_us), min(i.issued_us), max(i.issued_us)"
    " FROM billed_windows b JOIN invoices i ON i.id = b.invoice"
    " WHERE b.namespace = %(ns)s AND b.window_end_us > %(a)s AND b.window_start_us < %(b)s"
    " AND b.invoice NOT IN (SELECT invoice FROM invoice_voids) AND b.origin NOT IN (SELECT invoice FROM invoice_voids)"
    " GROUP BY b.subscription, b.customer, b.window_start_us"
)
"""Per subscription and window: the first invoice that billed it and the last adjustment (as
the embedded store's ``billed_windows``)."""


class PgReconciliationCounts:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def rejected(self, namespace: str, start: int, end: int) -> dict[tuple[str, str, int], int]:
        """Dead letters received in ``[start, end)`` and not re-submitted: (reason, the event's
        type as sent, or "" when it has none, quarter hour of receipt) -> count."""
        out: dict[tuple[str, str, int], int] = {}
        with self._db.tx() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT reason, raw, received_us FROM dead_letters WHERE namespace = %s"
                " AND received_us >= %s AND received_us < %s AND resubmitted_us IS NULL",
                (namespace, start * _US, end * _US),
            )
            for reason, raw, received_us in cur:
                key = (reason, _type_of(bytes(raw)), received_us // _Q_US * QUARTER)
                out[key] = out.get(key, 0) + 1
        return out

    def quarantined(self, namespace: str, start: int, end: int) -> dict[tuple[str, int], int]:
        """Events still held (not released to the log), received in ``[start, end)``."""
        with self._db.tx() as conn:
            rows = conn.execute(
                f"SELECT type, received_us / {_Q_US} AS q, count(*) FROM quarantine WHERE namespace = %s"
                " AND received_us >= %s AND received_us < %s AND released_us IS NULL GROUP BY type, q",
                (namespace, start * _US, end * _US),
            ).fetchall()
        return {(t, int(q) * QUARTER): int(n) for t, q, n in rows}

    def namespaces(self) -> list[str]:
        with self._db.tx() as conn:
            rows = conn.execute("SELECT DISTINCT namespace FROM meters WHERE deleted_us IS NULL ORDER BY 1").fetchall()
        return [ns for (ns,) in rows]

    def invoiced(self, namespace: str, start_us: int, end_us: int) -> Invoiced:
        """The namespace's subjects' customers and the finalized windows overlapping the range."""
        windows: dict[str, list[Window]] = {}
        with self._db.tx() as conn:
            owners = conn.execute(
                "SELECT subject, customer FROM customer_subjects WHERE namespace = %s", (namespace,)
            ).fetchall()
            found = conn.execute(_WINDOWS, {"ns": namespace, "a": start_us, "b": end_us}).fetchall()
        for customer, a, b, first, last in found:
            windows.setdefault(customer, []).append((int(a), int(b), int(first), int(last)))
        return Invoiced(dict(owners), windows)


def _type_of(raw: bytes) -> str:
    """The ``type`` of a dead letter's event as sent ("" when it is not a JSON object with one)."""
    try:
        body: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return ""
    found = body.get("type") if isinstance(body, dict) else None
    return found if isinstance(found, str) else ""
