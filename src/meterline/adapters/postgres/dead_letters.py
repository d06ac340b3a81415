"""The dead-letter store in PostgreSQL (``ports.dead_letters``): what API nodes of scale mode
rejected, written before the request is answered; and their re-submission
(:class:`PgResubmitter`)."""

from __future__ import annotations

import builtins
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from meterline.adapters.postgres.database import PgDatabase
from meterline.domain.errors import Conflict, StorageUnavailable
from meterline.domain.events.model import Candidate, Outcome
from meterline.ports.dead_letters import DeadLetter, DeadLetterFilter, Rejected, Resubmitted
from meterline.ports.ledger import Ledger

log = logging.getLogger(__name__)

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
    """Re-submission over the API node's ledger (``ports.dead_letters.Resubmitter``), without
    holding a pooled connection while the events travel to the log (the append itself needs the
    pool for its dedupe claims; a connection held across it could starve the pool):

    1. a short transaction locks the chosen dead letters (``FOR UPDATE``) and leases those
       neither re-submitted nor leased by another request (``resubmit_token`` and
       ``resubmit_lease_us``, the lease long enough for an append to finish or fail);
    2. the leased ones are appended through ``ledger`` (claimed, written to the log and
       confirmed as any ingest: an event counted before is a duplicate, never counted twice);
    3. a second short transaction marks each with its outcome, if still under this request's
       lease.

    Dead letters leased by a concurrent request are waited for (polled) and then reported as
    already re-submitted; a lease whose request died (or whose append failed, which clears it at
    once) is taken over: what that request wrote answers as a duplicate. After ``timeout`` of
    waiting the call answers 409 ``resubmission_in_progress``: retrying is safe."""

    def __init__(
        self, db: PgDatabase, ledger: Ledger, now_us: Callable[[], int], timeout: float, *, poll: float = 0.05
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._now_us = now_us
        self._timeout = timeout
        self._lease_us = int(timeout * 2 * 1_000_000)
        self._poll = poll

    def resubmit(
        self, namespace: str, ids: tuple[int, ...], decode: Callable[[int, bytes], Candidate], actor: str
    ) -> Resubmitted:
        outcomes: builtins.list[tuple[int, Outcome]] = []
        already: builtins.list[int] = []
        pending = tuple(ids)
        deadline = time.monotonic() + self._timeout
        while True:
            token = secrets.token_hex(16)
            fresh, done, busy = self._lease(namespace, pending, token)
            already.extend(done)
            if fresh:
                outcomes.extend(self._append(namespace, fresh, decode, actor, token, len(outcomes)))
            if not busy:
                return Resubmitted(sorted(outcomes), tuple(sorted(already)), 0)
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"another request is still re-submitting dead letters {list(busy)}; retry when it is done",
                    code="resubmission_in_progress",
                )
            pending = busy
            time.sleep(self._poll)

    def _lease(
        self, namespace: str, ids: tuple[int, ...], token: str
    ) -> tuple[builtins.list[tuple[int, bytes]], builtins.list[int], tuple[int, ...]]:
        """Lease the chosen dead letters free to re-submit: (leased with their raw events,
        re-submitted before, leased by another request)."""
        now = self._now_us()
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT id, raw, resubmitted_us, resubmit_lease_us FROM dead_letters"
                " WHERE namespace = %s AND id = ANY(%s) ORDER BY id FOR UPDATE",
                (namespace, list(ids)),
            ).fetchall()
            fresh = [(id_, bytes(raw)) for id_, raw, done, lease in rows if done is None and (lease or 0) <= now]
            done = [id_ for id_, _, done, _ in rows if done is not None]
            busy = tuple(id_ for id_, _, done, lease in rows if done is None and (lease or 0) > now)
            if fresh:
                conn.execute(
                    "UPDATE dead_letters SET resubmit_token = %s, resubmit_lease_us = %s WHERE id = ANY(%s)",
                    (token, now + self._lease_us, [id_ for id_, _ in fresh]),
                )
        return fresh, done, busy

    def _append(
        self,
        namespace: str,
        fresh: Sequence[tuple[int, bytes]],
        decode: Callable[[int, bytes], Candidate],
        actor: str,
        token: str,
        first: int,
    ) -> builtins.list[tuple[int, Outcome]]:
        try:
            candidates = [decode(first + i, raw) for i, (_, raw) in enumerate(fresh)]
            appended = self._ledger.append(namespace, candidates).result(self._timeout)
        except BaseException:
            self._release(token)
            raise
        outcomes = [(id_, outcome) for (id_, _), outcome in zip(fresh, appended, strict=True)]
        now = self._now_us()
        with self._db.tx() as conn, conn.cursor() as cur:
            cur.executemany(
                "UPDATE dead_letters SET resubmitted_us = %s, resubmitted_status = %s, resubmitted_by = %s,"
                " resubmit_token = NULL, resubmit_lease_us = NULL"
                " WHERE id = %s AND resubmit_token = %s AND resubmitted_us IS NULL",
                [(now, o.status.value, actor, id_, token) for id_, o in outcomes],
            )
        return outcomes

    def _release(self, token: str) -> None:
        """Give up a lease at once (the append failed): a retry need not wait for it to expire."""
        try:
            with self._db.tx() as conn:
                conn.execute(
                    "UPDATE dead_letters SET resubmit_token = NULL, resubmit_lease_us = NULL WHERE resubmit_token = %s",
                    (token,),
                )
        except StorageUnavailable:
            log.warning("could not release a dead-letter re-submission lease; it expires by itself")


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
