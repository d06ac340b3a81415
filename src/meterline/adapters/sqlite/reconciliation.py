"""Reconciliation counts in SQLite (:class:`~meterline.ports.reconciliation.ReconciliationCounts`).

Each answer is one grouped query on a reader connection. The ledger count scans the
namespace's events in the range (the ledger has no time index: ingest stays one b-tree per
event); the others read indexed rows (rollups by meter and level, dead letters by namespace
and receipt time) or the usually small quarantine.
"""

from __future__ import annotations

from meterline.adapters.sqlite.database import Database
from meterline.domain.meters.model import Meter
from meterline.ports.reconciliation import QUARTER

_US = 1_000_000


class SqliteReconciliationCounts:
    def __init__(self, db: Database) -> None:
        self._db = db

    def accepted(self, namespace: str, start: int, end: int, through: int) -> dict[tuple[str, int], int]:
        rows = self._db.reader().execute(
            f"SELECT type, time_us / {QUARTER * _US} AS q, count(*) FROM events"
            " WHERE seq <= ? AND namespace = ? AND time_us >= ? AND time_us < ?"
            " AND seq NOT IN (SELECT seq FROM corrections) GROUP BY type, q",
            (through, namespace, start * _US, end * _US),
        )
        return {(t, q * QUARTER): n for t, q, n in rows}

    def metered(self, meter: Meter, start: int, end: int) -> dict[int, int]:
        self._db.fresh()  # the aggregator writes the rollups: wait as the request asks, note the position
        rows = self._db.reader().execute(
            "SELECT bucket, sum(cnt) FROM rollups WHERE meter = ? AND level = ? AND bucket >= ? AND bucket < ?"
            " GROUP BY bucket",
            (meter.key, QUARTER, start, end),
        )
        return {int(b): int(n) for b, n in rows}

    def rejected(self, namespace: str, start: int, end: int) -> dict[tuple[str, str, int], int]:
        rows = self._db.reader().execute(
            "SELECT reason, CASE WHEN json_valid(CAST(raw AS TEXT)) THEN json_extract(CAST(raw AS TEXT), '$.type')"
            f" END AS t, received_us / {QUARTER * _US} AS q, count(*) FROM dead_letters"
            " WHERE namespace = ? AND received_us >= ? AND received_us < ? GROUP BY reason, t, q",
            (namespace, start * _US, end * _US),
        )
        return {(r, t if isinstance(t, str) else "", q * QUARTER): n for r, t, q, n in rows}

    def quarantined(self, namespace: str, start: int, end: int) -> dict[tuple[str, int], int]:
        rows = self._db.reader().execute(
            f"SELECT type, received_us / {QUARTER * _US} AS q, count(*) FROM quarantine"
            " WHERE namespace = ? AND received_us >= ? AND received_us < ? GROUP BY type, q",
            (namespace, start * _US, end * _US),
        )
        return {(t, q * QUARTER): n for t, q, n in rows}
