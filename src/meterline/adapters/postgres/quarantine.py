"""The quarantine of scale mode in PostgreSQL (``ports.quarantine``; the protocol is described
there and in docs/scale.md).

One row per held event. ``released_us`` is set by the customer save that claims the subject
(:func:`mark_released`, in that save's transaction), ``lease_us`` by the releaser that took it,
``delivered_us`` and ``outcome`` once it is in the log (or dead-lettered), ``counted_at`` by the
first sink worker that counted a copy of it. Holding takes the namespace's customer lock (the
one customer saves take), so an event is either held before a save claims its subject, and
released by it, or finds the subject claimed and is written to the log: never held for a
subject that already has a customer.

At most one *held* row per key (a partial unique index): the same event sent again after its
dedupe key left the window is held again, as a new row, once the first was released.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any

from meterline.adapters.postgres.database import Connection, PgDatabase, lock
from meterline.domain.customers.model import UnknownSubjects
from meterline.domain.events.model import Event
from meterline.domain.meters.fold import event_data
from meterline.ports.customers import Quarantined
from meterline.ports.quarantine import Copy, Release, Screened


class PgQuarantine:
    def __init__(self, db: PgDatabase, now_us: Callable[[], int]) -> None:
        self._db = db
        self._now_us = now_us

    def screen(self, namespace: str, subjects: Sequence[str]) -> Screened:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT (SELECT unknown_subjects FROM namespace_settings WHERE namespace = %(ns)s),"
                " ARRAY(SELECT subject FROM customer_subjects WHERE namespace = %(ns)s AND subject = ANY(%(s)s)"
                " UNION SELECT key FROM customers WHERE namespace = %(ns)s AND key = ANY(%(s)s)"
                " AND deleted_us IS NULL)",
                {"ns": namespace, "s": list(set(subjects))},
            ).fetchone()
        assert row is not None
        return Screened(None if row[0] is None else UnknownSubjects(row[0]), frozenset(row[1]))

    def hold(self, namespace: str, token: str, events: Sequence[Event], received_us: int) -> bool:
        if not events:
            return True
        with self._db.tx() as conn:
            lock(conn, "customers", namespace)
            subjects = list({e.subject for e in events})
            claimed = conn.execute(
                "SELECT 1 FROM customer_subjects WHERE namespace = %(ns)s AND subject = ANY(%(s)s) UNION ALL"
                " SELECT 1 FROM customers WHERE namespace = %(ns)s AND key = ANY(%(s)s) AND deleted_us IS NULL LIMIT 1",
                {"ns": namespace, "s": subjects},
            ).fetchone()
            if claimed is not None:
                return False
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO quarantine (namespace, source, event_id, type, subject, time_us, received_us,"
                    " digest, raw, token) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                    " ON CONFLICT (namespace, source, event_id) WHERE released_us IS NULL"
                    " DO UPDATE SET token = excluded.token",
                    [
                        (namespace, e.source, e.id, e.type, e.subject, e.time_us, received_us, e.digest, e.raw, token)
                        for e in events
                    ],
                )
        return True

    def take(self, limit: int, lease_us: int) -> builtins.list[Release]:
        now = self._now_us()
        with self._db.tx() as conn:
            rows = conn.execute(
                "UPDATE quarantine SET lease_us = %s WHERE id IN ("
                " SELECT id FROM quarantine WHERE released_us IS NOT NULL AND delivered_us IS NULL"
                " AND (lease_us IS NULL OR lease_us <= %s) ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING id, namespace, source, event_id, type, subject, time_us, received_us, digest, raw, token",
                (now + lease_us, now, limit),
            ).fetchall()
        rows.sort(key=lambda r: r[0])
        return [
            Release(
                r[0],
                Event(r[1], r[2], r[3], r[4], r[5], r[6], event_data(bytes(r[9])), bytes(r[9]), bytes(r[8])),
                r[7],
                r[10],
            )
            for r in rows
        ]

    def delivered(self, outcomes: Sequence[tuple[int, str]]) -> None:
        if not outcomes:
            return
        now = self._now_us()
        with self._db.tx() as conn, conn.cursor() as cur:
            cur.executemany(
                "UPDATE quarantine SET delivered_us = %s, outcome = %s WHERE id = %s AND delivered_us IS NULL",
                [(now, outcome, id_) for id_, outcome in outcomes],
            )

    def settle(self, copies: Sequence[Copy]) -> builtins.list[bool]:
        if not copies:
            return []
        with self._db.tx() as conn:
            rows = conn.execute(
                "WITH c AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
                " AS c(namespace, source, event_id, token, position))"
                " UPDATE quarantine q SET counted_at = c.position FROM c"
                " WHERE q.namespace = c.namespace AND q.source = c.source AND q.event_id = c.event_id"
                " AND q.token = c.token AND q.released_us IS NOT NULL"
                " AND (q.counted_at IS NULL OR q.counted_at = c.position)"
                " RETURNING c.position",
                (
                    [c.namespace for c in copies],
                    [c.source for c in copies],
                    [c.id for c in copies],
                    [c.token for c in copies],
                    [c.position for c in copies],
                ),
            ).fetchall()
        counted = {p for (p,) in rows}
        return [c.position in counted for c in copies]

    def went_to_quarantine(self, namespace: str, source: str, event_id: str) -> bool:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT 1 FROM quarantine WHERE namespace = %s AND source = %s AND event_id = %s LIMIT 1",
                (namespace, source, event_id),
            ).fetchone()
        return row is not None

    def quarantined(
        self, namespace: str, subject: str | None, *, limit: int, after_id: int
    ) -> builtins.list[Quarantined]:
        """Held events (not yet released) with ``id > after_id``, oldest first."""
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT id, source, event_id, type, subject, time_us, received_us, raw FROM quarantine"
                " WHERE namespace = %s AND released_us IS NULL AND id > %s AND (%s::text IS NULL OR subject = %s)"
                " ORDER BY id LIMIT %s",
                (namespace, after_id, subject, subject, max(limit, 0)),
            ).fetchall()
        return [Quarantined(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7])) for r in rows]

    def size(self) -> int:
        """Events held (not yet released), over every namespace."""
        with self._db.tx() as conn:
            row = conn.execute("SELECT count(*) FROM quarantine WHERE released_us IS NULL").fetchone()
        return int(row[0]) if row else 0


def mark_released(conn: Connection, namespace: str, subjects: Sequence[str], now_us: int) -> int:
    """In a customer save's transaction (which holds the namespace's customer lock): mark the
    held events of ``subjects`` released; how many."""
    if not subjects:
        return 0
    cur: Any = conn.execute(
        "UPDATE quarantine SET released_us = %s WHERE namespace = %s AND subject = ANY(%s) AND released_us IS NULL",
        (now_us, namespace, list(subjects)),
    )
    return int(cur.rowcount)
