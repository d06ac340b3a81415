"""Reconciliation counts in SQLite (:class:`~meterline.ports.reconciliation.ReconciliationCounts`).

Each answer is one query on a reader connection over indexed rows: ledger counts and
meter-wide summaries (``summaries.py``: kept by the aggregator, per UTC quarter hour), dead
letters by namespace and receipt time, or the usually small quarantine. No answer scans the
ledger: accepted events come from the counts the aggregator keeps up to its offset.
"""

from __future__ import annotations

from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.replay import stored_offset
from meterline.adapters.sqlite.summaries import count_key
from meterline.domain.meters.model import Aggregation, Meter
from meterline.ports.reconciliation import QUARTER

_US = 1_000_000


class SqliteReconciliationCounts:
    def __init__(self, db: Database) -> None:
        self._db = db

    def accepted(self, namespace: str, start: int, end: int, through: int) -> dict[tuple[str, int], int]:
        """From ``ledger_counts`` (kept by the aggregator up to its offset; correction entries
        are not events and are not counted), moved to exactly ``through`` by counting the few
        ledger entries between the two, in one read snapshot."""
        conn = self._db.reader()
        conn.execute("BEGIN")
        try:
            offset = stored_offset(conn)
            rows = conn.execute(
                "SELECT type, bucket, cnt FROM ledger_counts WHERE namespace = ? AND bucket >= ? AND bucket < ?",
                (namespace, start, end),
            )
            counts = {(t, b): n for t, b, n in rows}
            low, high, sign = (through, offset, -1) if through < offset else (offset, through, 1)
            between = conn.execute(
                "SELECT type, time_us FROM events WHERE seq > ? AND seq <= ? AND namespace = ?"
                " AND time_us >= ? AND time_us < ? AND seq NOT IN (SELECT seq FROM corrections)",
                (low, high, namespace, start * _US, end * _US),
            )
            for t, time_us in between:
                _, _, bucket = count_key(namespace, t, time_us)
                counts[(t, bucket)] = counts.get((t, bucket), 0) + sign
        finally:
            conn.execute("COMMIT")
        return {k: n for k, n in counts.items() if n}

    def metered(self, meter: Meter, start: int, end: int) -> dict[int, int]:
        self._db.fresh()  # the aggregator writes the rollups: wait as the request asks, note the position
        table, wide = ("summaries", " AND subject = ''")
        if meter.spec.aggregation is Aggregation.UNIQUE_COUNT:  # no summaries: distinct values do not add up
            table, wide = "rollups", ""
        rows = self._db.reader().execute(
            f"SELECT bucket, sum(cnt) FROM {table} WHERE meter = ? AND level = ?{wide} AND bucket >= ? AND bucket < ?"
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
