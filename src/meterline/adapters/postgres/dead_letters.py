"""The dead-letter store in PostgreSQL (``ports.dead_letters``): what API nodes of scale mode
rejected, written before the request is answered; and their re-submission
(:class:`PgResubmitter`)."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any

from meterline.adapters.postgres.database import PgDatabase
from meterline.domain.events.model import Candidate
from meterline.ports.dead_letters import DeadLetter, DeadLetterFilter, Rejected, Resubmitted
from meterline.ports.ledger import Ledger

_COLUMNS = "id, namespace, received_us, reason, message, source, event_id, raw, resubmitted_us, resubmitted_status"


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
        return [DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7]), r[8], r[9]) for r in rows]

    def purge(self, namespace: str, f: DeadLetterFilter) -> int:
        where, params = _where(namespace, f)
        with self._db.tx() as conn:
            return conn.execute(f"DELETE FROM dead_letters WHERE {where}", params).rowcount

    def count(self) -> int:
        """Dead letters not re-submitted, of every namespace."""
        with self._db.tx() as conn:
            row = conn.execute("SELECT count(*) FROM dead_letters WHERE resubmitted_us IS NULL").fetchone()
        return int(row[0]) if row else 0


class PgResubmitter:
    """Re-submission over the API node's ledger (``ports.dead_letters.Resubmitter``): one
    PostgreSQL transaction locks the chosen dead letters (``FOR UPDATE``), appends those not
    re-submitted through ``ledger`` (claimed, written to the log and confirmed as any ingest:
    an event counted before is a duplicate, never counted twice), and marks them with their
    outcome. A concurrent re-submission of the same ids waits for the locks and finds them
    marked. A failed append or a node that dies before the commit marks nothing: re-submitting
    again is safe (what was written answers as a duplicate)."""

    def __init__(self, db: PgDatabase, ledger: Ledger, now_us: Callable[[], int], timeout: float) -> None:
        self._db = db
        self._ledger = ledger
        self._now_us = now_us
        self._timeout = timeout

    def resubmit(
        self, namespace: str, ids: tuple[int, ...], decode: Callable[[int, bytes], Candidate], actor: str
    ) -> Resubmitted:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT id, raw, resubmitted_us FROM dead_letters WHERE namespace = %s AND id = ANY(%s)"
                " ORDER BY id FOR UPDATE",
                (namespace, list(ids)),
            ).fetchall()
            fresh = [(id_, bytes(raw)) for id_, raw, done in rows if done is None]
            already = tuple(id_ for id_, _, done in rows if done is not None)
            if not fresh:
                return Resubmitted([], already, 0)
            candidates = [decode(i, raw) for i, (_, raw) in enumerate(fresh)]
            appended = self._ledger.append(namespace, candidates).result(self._timeout)
            outcomes = [(id_, outcome) for (id_, _), outcome in zip(fresh, appended, strict=True)]
            now = self._now_us()
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE dead_letters SET resubmitted_us = %s, resubmitted_status = %s, resubmitted_by = %s"
                    " WHERE id = %s",
                    [(now, o.status.value, actor, id_) for id_, o in outcomes],
                )
        return Resubmitted(outcomes, already, 0)


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
    if f.resubmitted is not None:
        where.append("resubmitted_us IS NOT NULL" if f.resubmitted else "resubmitted_us IS NULL")
    return " AND ".join(where), params
