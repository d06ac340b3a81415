"""The journal of acknowledged corrections in PostgreSQL (``ports.correction_log``).

``append`` holds an advisory transaction lock on the key, so two corrections of one event
(through any API nodes) are checked and written one after the other: the second sees the
first (a void after a void is ``event_voided``). The row is stored after the log acknowledged
the entry, in the same transaction that held the lock; a node that dies in between leaves an
entry in the log that the journal lacks — its caller got no answer, and the sink counts it like
any correction (only the first correction of a version counts: ``adapters.clickhouse``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from meterline.adapters.postgres.database import PgDatabase, lock
from meterline.domain.events.corrections import Action
from meterline.ports.correction_log import Journaled

_COLUMNS = (
    "namespace, source, event_id, stream, original, seq, target, action, reason, actor, received_us,"
    " type, subject, time_us, raw, was_type, was_subject, was_time_us"
)


class PgCorrectionJournal:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def append(
        self,
        namespace: str,
        source: str,
        event_id: str,
        stream: str,
        original: int,
        write: Callable[[list[Journaled]], Journaled],
    ) -> Journaled:
        with self._db.tx() as conn:
            lock(conn, "correction", namespace, source, event_id)
            chain = [_journaled(r) for r in conn.execute(*_chain(namespace, source, event_id, stream, original))]
            new = write(chain)
            row = conn.execute(
                f"INSERT INTO event_corrections ({_COLUMNS}) VALUES ({', '.join(['%s'] * 18)}) RETURNING id",
                _values(new),
            ).fetchone()
            assert row is not None
            return dataclasses.replace(new, number=int(row[0]))

    def chain(self, namespace: str, source: str, event_id: str, stream: str, original: int) -> list[Journaled]:
        with self._db.tx() as conn:
            return [_journaled(r) for r in conn.execute(*_chain(namespace, source, event_id, stream, original))]

    def since(self, namespace: str, received_from_us: int, limit: int) -> list[Journaled]:
        with self._db.tx() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS}, id FROM event_corrections WHERE namespace = %s AND received_us >= %s"
                " ORDER BY received_us, id LIMIT %s",
                (namespace, received_from_us, limit),
            ).fetchall()
        return [_journaled(r) for r in rows]

    def every(self, after: int, limit: int) -> list[Journaled]:
        with self._db.tx() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS}, id FROM event_corrections WHERE id > %s ORDER BY id LIMIT %s", (after, limit)
            ).fetchall()
        return [_journaled(r) for r in rows]


def _chain(namespace: str, source: str, event_id: str, stream: str, original: int) -> tuple[str, tuple[Any, ...]]:
    return (
        f"SELECT {_COLUMNS}, id FROM event_corrections WHERE namespace = %s AND source = %s AND event_id = %s"
        " AND stream = %s AND original = %s ORDER BY seq",
        (namespace, source, event_id, stream, original),
    )


def _values(j: Journaled) -> tuple[Any, ...]:
    return (
        j.namespace, j.source, j.event_id, j.stream, j.original, j.seq, j.target, j.action.value, j.reason,
        j.actor, j.received_us, j.type, j.subject, j.time_us, j.raw, j.was_type, j.was_subject, j.was_time_us,
    )  # fmt: skip


def _journaled(r: Any) -> Journaled:
    raw = None if r[14] is None else bytes(r[14])
    return Journaled(
        r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), int(r[6]), Action(r[7]), r[8], r[9], int(r[10]), r[11],
        r[12], int(r[13]), raw, r[15], r[16], int(r[17]), int(r[18]) if len(r) > 18 else 0,
    )  # fmt: skip
