"""The ledger in SQLite (``ports.ledger.Ledger``): idempotent appends through the writer,
reads by anyone."""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.ingest import Appender, IngestState
from meterline.adapters.sqlite.replay import ENTRIES
from meterline.domain.errors import InvalidInput
from meterline.domain.events.model import Candidate, Outcome
from meterline.ports.ledger import Appended, EventFilter, LedgerEntry, StoredEvent
from meterline.runtime import freshness

__all__ = ["EventFilter", "SqliteLedger", "StoredEvent"]


class SqliteLedger:
    def __init__(self, db: Database, state: IngestState, now_us: Callable[[], int]) -> None:
        self._db = db
        self._state = state
        self._now_us = now_us
        self._together = self._append_together  # one object: the writer runs tasks sharing it together

    def append(self, namespace: str, candidates: Sequence[Candidate]) -> Future[list[Outcome]]:
        """Record a request's events. The future resolves after the commit that holds them,
        with an :class:`~meterline.ports.ledger.Appended` (outcomes and ledger position); the
        position is also noted on the request's freshness record. Requests that meet in one
        transaction are appended by one :class:`Appender` (``Appender.append_all``)."""
        future: Future[Appended] = self._db.writer.submit(
            _Append(self, namespace, candidates), weight=max(1, len(candidates)), together=self._together
        )
        record = freshness.current()
        if record is not None:
            future.add_done_callback(lambda f: _note(record, f))
        return future  # type: ignore[return-value]  # an Appended is a list of outcomes

    def _append_alone(self, conn: sqlite3.Connection, namespace: str, candidates: Sequence[Candidate]) -> Appended:
        return Appender(self._state, conn, self._now_us()).append(namespace, candidates)

    def _append_together(self, conn: sqlite3.Connection, tasks: builtins.list[_Append]) -> builtins.list[Appended]:
        requests = [(task.namespace, task.candidates) for task in tasks]
        return Appender(self._state, conn, self._now_us()).append_all(requests)

    def list(self, namespace: str, f: EventFilter, *, limit: int) -> builtins.list[StoredEvent]:
        """Newest first, as received (corrections are in each event's history, not here).
        ``subject`` and ``event_id`` match substrings, as OpenMeter's list does;
        ``source`` and ``type`` match exactly; time bounds are inclusive. ``before_seq`` pages by
        the primary key: a page reads from there down, never what came before it; with
        ``from_seq`` it reads no further down than that. A type that no event of the range has
        is answered from the (namespace, type, time) index without walking the ledger."""
        if f.after is not None:  # a cursor of scale mode's list; this ledger pages by seq
            raise InvalidInput("cursor must be a nextCursor this list answered", code="invalid_cursor")
        where: builtins.list[str] = ["namespace = ?", "seq NOT IN (SELECT seq FROM corrections)"]
        params: builtins.list[object] = [namespace]
        if f.before_seq is not None:
            where.append("seq < ?")
            params.append(f.before_seq)
        if f.from_seq is not None:
            where.append("seq >= ?")
            params.append(f.from_seq)
        for column, exact in (("source", f.source), ("type", f.type)):
            if exact:
                where.append(f"{column} = ?")
                params.append(exact)
        for column, value in (("subject", f.subject), ("id", f.event_id)):
            if value:
                where.append(f"instr({column}, ?) > 0")
                params.append(value)
        for clause, bound in (
            ("time_us >= ?", f.start_us),
            ("time_us <= ?", f.end_us),
            ("received_us >= ?", f.received_from_us),
            ("received_us <= ?", f.received_to_us),
        ):
            if bound is not None:
                where.append(clause)
                params.append(bound)
        conn = self._db.reader()
        if f.type and not _type_exists(conn, namespace, f):
            return []  # no event of the type (in the time range) at all: no need to walk the ledger
        # NOT INDEXED: walk the ledger backwards by seq and stop at the limit; the (namespace,
        # type, time) index of meter queries would make SQLite collect and sort every match
        rows = conn.execute(
            f"SELECT seq, namespace, raw, received_us FROM events NOT INDEXED WHERE {' AND '.join(where)}"
            " ORDER BY seq DESC LIMIT ?",
            [*params, limit],
        )
        return [StoredEvent(*row) for row in rows]

    def read(self, after: int, limit: int) -> builtins.list[LedgerEntry]:
        """From the recent committed entries in memory when they hold ``after + 1`` (with
        ingest's readings: ``adapters.sqlite.recent``), else from the table."""
        recent = self._state.recent.read(after, limit)
        if recent is not None:
            return recent
        rows = self._db.reader().execute(f"{ENTRIES} WHERE e.seq > ? ORDER BY e.seq LIMIT ?", (after, limit))
        return [LedgerEntry(*row) for row in rows]

    def position(self) -> int:
        """The last committed position, as published after each COMMIT (no query)."""
        return self._state.head

    def size(self) -> int:
        row = self._db.reader().execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        return int(row[0])


class _Append:
    """One request's append, as a writer task (run alone, or with its neighbours)."""

    __slots__ = ("candidates", "ledger", "namespace")

    def __init__(self, ledger: SqliteLedger, namespace: str, candidates: Sequence[Candidate]) -> None:
        self.ledger = ledger
        self.namespace = namespace
        self.candidates = candidates

    def __call__(self, conn: sqlite3.Connection) -> Appended:
        return self.ledger._append_alone(conn, self.namespace, self.candidates)


def _type_exists(conn: sqlite3.Connection, namespace: str, f: EventFilter) -> bool:
    """Whether any event of ``f.type`` (within its event-time bounds) exists: one probe of the
    (namespace, type, time) index."""
    sql = "SELECT 1 FROM events INDEXED BY events_by_type_time WHERE namespace = ? AND type = ?"
    params: list[object] = [namespace, f.type]
    if f.start_us is not None:
        sql += " AND time_us >= ?"
        params.append(f.start_us)
    if f.end_us is not None:
        sql += " AND time_us <= ?"
        params.append(f.end_us)
    return conn.execute(sql + " LIMIT 1", params).fetchone() is not None


def _note(record: freshness.Freshness, future: Future[Appended]) -> None:
    if not future.cancelled() and future.exception() is None:
        record.ingested = future.result().position
