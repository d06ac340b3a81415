"""The dead-letter store in SQLite (:class:`~meterline.ports.dead_letters.DeadLetterStore`)."""

from __future__ import annotations

import sqlite3

from meterline.adapters.sqlite.database import Database
from meterline.ports.dead_letters import DeadLetter, DeadLetterFilter


class SqliteDeadLetters:
    def __init__(self, db: Database) -> None:
        self._db = db

    def list(self, namespace: str, f: DeadLetterFilter, *, limit: int, after_id: int = 0) -> list[DeadLetter]:
        where, params = _where(namespace, f)
        rows = self._db.reader().execute(
            f"SELECT id, namespace, received_us, reason, message, source, event_id, raw FROM dead_letters"
            f" WHERE {where} AND id > ? ORDER BY id LIMIT ?",
            [*params, after_id, limit],
        )
        return [DeadLetter(*row) for row in rows]

    def purge(self, namespace: str, f: DeadLetterFilter) -> int:
        where, params = _where(namespace, f)

        def purge(conn: sqlite3.Connection) -> int:
            return conn.execute(f"DELETE FROM dead_letters WHERE {where}", params).rowcount

        return self._db.writer.call(purge)

    def count(self) -> int:
        return int(self._db.reader().execute("SELECT count(*) FROM dead_letters").fetchone()[0])


def _where(namespace: str, f: DeadLetterFilter) -> tuple[str, list[object]]:
    where: list[str] = ["namespace = ?"]
    params: list[object] = [namespace]
    if f.reason:
        where.append("reason = ?")
        params.append(f.reason)
    if f.source:
        where.append("source = ?")
        params.append(f.source)
    if f.start_us is not None:
        where.append("received_us >= ?")
        params.append(f.start_us)
    if f.end_us is not None:
        where.append("received_us < ?")
        params.append(f.end_us)
    if f.ids:
        where.append(f"id IN ({','.join('?' * len(f.ids))})")
        params.extend(f.ids)
    return " AND ".join(where), params
