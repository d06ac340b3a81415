"""The dead-letter store in PostgreSQL (``ports.dead_letters``): what API nodes of scale mode
rejected, written before the request is answered."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

from meterline.adapters.postgres.database import PgDatabase
from meterline.ports.dead_letters import DeadLetter, DeadLetterFilter, Rejected

_COLUMNS = "id, namespace, received_us, reason, message, source, event_id, raw"


class PgDeadLetters:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def add(self, namespace: str, received_us: int, letters: Sequence[Rejected]) -> None:
        if not letters:
            return
        with self._db.tx() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO dead_letters (namespace, received_us, reason, message, source, event_id, raw)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s)",
                [(namespace, received_us, x.reason, x.message, x.source, x.event_id, x.raw) for x in letters],
            )

    def list(self, namespace: str, f: DeadLetterFilter, *, limit: int, after_id: int = 0) -> builtins.list[DeadLetter]:
        where, params = _where(namespace, f)
        with self._db.tx() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE {where} AND id > %s ORDER BY id LIMIT %s",
                [*params, after_id, limit],
            ).fetchall()
        return [DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7])) for r in rows]

    def purge(self, namespace: str, f: DeadLetterFilter) -> int:
        where, params = _where(namespace, f)
        with self._db.tx() as conn:
            return conn.execute(f"DELETE FROM dead_letters WHERE {where}", params).rowcount

    def count(self) -> int:
        with self._db.tx() as conn:
            row = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        return int(row[0]) if row else 0


def _where(namespace: str, f: DeadLetterFilter) -> tuple[str, list[Any]]:
    where: list[str] = ["namespace = %s"]
    params: list[Any] = [namespace]
    for clause, value in (
        ("reason = %s", f.reason),
        ("source = %s", f.source),
        ("received_us >= %s", f.start_us),
        ("received_us < %s", f.end_us),
    ):
        if value is not None and value != "":
            where.append(clause)
            params.append(value)
    if f.ids:
        where.append("id = ANY(%s)")
        params.append(list(f.ids))
    return " AND ".join(where), params
