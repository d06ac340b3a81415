"""Corrections in SQLite (``ports.corrections.Corrections``).

A correction is appended by the writer like an ingest request (``Appender.correct``): in one
task it finds the key's chain through the dedupe index, checks that it can be corrected, and
appends the correction entry to ``events`` (same key, next seq, dedupe index, recent entries for
the aggregator) with its row in ``corrections``. Two concurrent corrections of one key are two
writer tasks: the second sees the first (a void after a void is ``event_voided``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import msgspec

from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.ingest import Appender, IngestState
from meterline.adapters.sqlite.retention import hours_before, pruned_key
from meterline.domain.errors import NotFound
from meterline.domain.events.corrections import (
    Action,
    CorrectionRequest,
    History,
    Version,
    event_not_found,
    event_pruned,
    event_voided,
)
from meterline.domain.events.model import Event
from meterline.ports.corrections import Corrected, CorrectionRecord

_CHAIN = (
    "SELECT e.seq, c.action, e.received_us, e.type, e.subject, e.time_us, e.raw, e.digest, c.reason, c.actor,"
    " c.original FROM events e LEFT JOIN corrections c ON c.seq = e.seq WHERE e.seq IN (SELECT value FROM json_each(?))"
    " ORDER BY e.seq"
)


class SqliteCorrections:
    def __init__(self, db: Database, state: IngestState, now_us: Callable[[], int]) -> None:
        self._db = db
        self._state = state
        self._now_us = now_us

    def correct(self, request: CorrectionRequest) -> Corrected:
        seq, original = self._db.writer.call(lambda conn: self._correct(conn, request))
        return Corrected(seq, original, request.action, seq)

    def _correct(self, conn: sqlite3.Connection, req: CorrectionRequest) -> tuple[int, int]:
        appender = Appender(self._state, conn, self._now_us())
        rows = self._chain(conn, req.namespace, req.source, req.event_id)
        self._not_pruned(conn, req, rows)
        if not rows:
            raise event_not_found(req.source, req.event_id)
        last = rows[-1]
        if last[1] == Action.VOID.value:
            raise event_voided(req.event_id)
        original = rows[0][0]
        current = Event(req.namespace, req.source, req.event_id, last[3], last[4], last[5], None, last[6], last[7])
        return appender.correct(req, original, current), original

    def _not_pruned(self, conn: sqlite3.Connection, req: CorrectionRequest, rows: list[Any]) -> None:
        """Refuse a key with a version removed by retention, one in an hour that lost raw events,
        or an amend into such an hour (a corrected hour is recomputed from the ledger:
        docs/retention.md)."""
        before = hours_before(conn)
        if not before:
            return
        times = [row[5] for row in rows] + ([req.event.time_us] if req.event is not None else [])
        if any(t < before for t in times) or pruned_key(
            conn, self._state.dedupe.key_hash(req.namespace, req.source, req.event_id)
        ):
            raise event_pruned(req.source, req.event_id)

    def _chain(self, conn: sqlite3.Connection, namespace: str, source: str, event_id: str) -> list[Any]:
        """The newest original of the key and its corrections, in ledger order."""
        seqs = self._state.dedupe.seqs(conn, namespace, source, event_id)
        if not seqs:
            return []
        rows = conn.execute(_CHAIN, (msgspec.json.encode(seqs).decode(),)).fetchall()
        originals = [row[0] for row in rows if row[1] is None]
        if not originals:
            return []
        first = originals[-1]
        return [row for row in rows if row[0] == first or row[10] == first]

    def history(self, namespace: str, source: str, event_id: str) -> History:
        conn = self._db.reader()
        rows = self._chain(conn, namespace, source, event_id)
        if not rows:
            if hours_before(conn) and pruned_key(conn, self._state.dedupe.key_hash(namespace, source, event_id)):
                raise NotFound(
                    f"Event {event_id!r} from source {source!r} was removed by retention (its totals stand)",
                    code="event_pruned",
                )
            raise event_not_found(source, event_id)
        versions = tuple(
            Version(
                seq,
                None if action is None else Action(action),
                received,
                type_,
                subject,
                time_us,
                None if action == Action.VOID.value else raw,
                reason,
                actor,
            )
            for seq, action, received, type_, subject, time_us, raw, _, reason, actor, _ in rows
        )
        return History(namespace, source, event_id, versions)

    def since(self, namespace: str, received_from_us: int, limit: int) -> list[CorrectionRecord]:
        conn = self._db.reader()
        rows = conn.execute(
            "SELECT c.seq, c.original, c.action, c.reason, c.actor, e.received_us, e.type, e.subject, e.time_us"
            " FROM corrections c JOIN events e ON e.seq = c.seq WHERE c.namespace = ? AND e.received_us >= ?"
            " ORDER BY c.seq LIMIT ?",
            (namespace, received_from_us, limit),
        ).fetchall()
        out = []
        for seq, original, action, reason, actor, received, type_, subject, time_us in rows:
            before = conn.execute(
                "SELECT subject, time_us, type FROM events WHERE seq = (SELECT max(seq) FROM events"
                " WHERE seq < ? AND (seq = ? OR seq IN (SELECT seq FROM corrections WHERE original = ?)))",
                (seq, original, original),
            ).fetchone()
            subjects: tuple[str, ...] = (subject,) if before is None else (before[0], subject)
            times: tuple[int, ...] = (time_us,) if before is None else (before[1], time_us)
            types: tuple[str, ...] = (type_,) if before is None else (before[2], type_)
            record = (seq, original, namespace, Action(action), reason, actor, received)
            out.append(CorrectionRecord(*record, subjects, times, types))
        return out
