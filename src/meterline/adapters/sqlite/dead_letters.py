"""The dead-letter store in SQLite (:class:`~meterline.ports.dead_letters.DeadLetterStore`) and
re-submission (:class:`~meterline.ports.dead_letters.Resubmitter`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.ingest import Appender, IngestState
from meterline.domain.events.model import Candidate
from meterline.ports.dead_letters import DeadLetter, DeadLetterFilter, Resubmitted

_LIST = (
    "SELECT d.id, d.namespace, d.received_us, d.reason, d.message, d.source, d.event_id, d.raw,"
    " r.resubmitted_us, r.status FROM dead_letters d LEFT JOIN resubmissions r ON r.dead_letter = d.id"
)


class SqliteDeadLetters:
    def __init__(self, db: Database) -> None:
        self._db = db

    def list(self, namespace: str, f: DeadLetterFilter, *, limit: int, after_id: int = 0) -> list[DeadLetter]:
        where, params = _where(namespace, f)
        rows = self._db.reader().execute(
            f"{_LIST} WHERE {where} AND d.id > ? ORDER BY d.id LIMIT ?", [*params, after_id, limit]
        )
        return [DeadLetter(*row) for row in rows]

    def purge(self, namespace: str, f: DeadLetterFilter) -> int:
        where, params = _where(namespace, f)
        chosen = f"SELECT d.id FROM dead_letters d LEFT JOIN resubmissions r ON r.dead_letter = d.id WHERE {where}"

        def purge(conn: sqlite3.Connection) -> int:
            conn.execute(f"DELETE FROM resubmissions WHERE dead_letter IN ({chosen})", params)
            return conn.execute(f"DELETE FROM dead_letters WHERE id IN ({chosen})", params).rowcount

        return self._db.writer.call(purge)

    def count(self) -> int:
        """Dead letters not re-submitted, of every namespace."""
        row = (
            self._db.reader()
            .execute("SELECT (SELECT count(*) FROM dead_letters) - (SELECT count(*) FROM resubmissions)")
            .fetchone()
        )
        return int(row[0])


class SqliteResubmitter:
    def __init__(self, db: Database, state: IngestState, now_us: Callable[[], int]) -> None:
        self._db = db
        self._state = state
        self._now_us = now_us

    def resubmit(
        self, namespace: str, ids: tuple[int, ...], decode: Callable[[int, bytes], Candidate], actor: str
    ) -> Resubmitted:
        return self._db.writer.call(lambda conn: self._resubmit(conn, namespace, ids, decode, actor))

    def _resubmit(
        self,
        conn: sqlite3.Connection,
        namespace: str,
        ids: tuple[int, ...],
        decode: Callable[[int, bytes], Candidate],
        actor: str,
    ) -> Resubmitted:
        # One writer task: the claim (the resubmissions rows) and the append commit together,
        # and a concurrent re-submission of the same ids runs after this one and finds them.
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            f"SELECT d.id, d.raw, r.dead_letter FROM dead_letters d LEFT JOIN resubmissions r ON r.dead_letter = d.id"
            f" WHERE d.namespace = ? AND d.id IN ({marks}) ORDER BY d.id",
            (namespace, *ids),
        ).fetchall()
        fresh = [(id_, raw) for id_, raw, done in rows if done is None]
        already = tuple(id_ for id_, _, done in rows if done is not None)
        now = self._now_us()
        appended = Appender(self._state, conn, now).append(
            namespace, [decode(i, raw) for i, (_, raw) in enumerate(fresh)]
        )
        outcomes = [(id_, outcome) for (id_, _), outcome in zip(fresh, appended, strict=True)]
        conn.executemany(
            "INSERT INTO resubmissions VALUES (?,?,?,?,?)",
            [(id_, namespace, now, o.status.value, actor) for id_, o in outcomes],
        )
        return Resubmitted(outcomes, already, appended.position)


def _where(namespace: str, f: DeadLetterFilter) -> tuple[str, list[object]]:
    where: list[str] = ["d.namespace = ?"]
    params: list[object] = [namespace]
    if f.reason:
        where.append("d.reason = ?")
        params.append(f.reason)
    if f.source:
        where.append("d.source = ?")
        params.append(f.source)
    if f.start_us is not None:
        where.append("d.received_us >= ?")
        params.append(f.start_us)
    if f.end_us is not None:
        where.append("d.received_us < ?")
        params.append(f.end_us)
    if f.ids:
        where.append(f"d.id IN ({','.join('?' * len(f.ids))})")
        params.extend(f.ids)
    if f.resubmitted is not None:
        where.append("r.dead_letter IS NOT NULL" if f.resubmitted else "r.dead_letter IS NULL")
    return " AND ".join(where), params
