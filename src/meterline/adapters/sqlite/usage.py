"""The usage store in SQLite (``ports.usage.UsageStore``): rollups written with the offset.

Guarantees of :meth:`SqliteUsage.apply` (one writer task, so one transaction with whatever
else that group commit holds):

1. it checks that the stored offset is still ``batch.start`` (the live offset in ``meta``, or
   the meter's ``backfill_done``) and, for the live offset, that the live meters are still the
   ones the batch was computed for; otherwise it writes nothing and answers False;
2. it writes the rollup deltas, group values and subjects, and moves the offset to
   ``batch.end``;
3. corrected keys (``Replay.corrected``) have the hours of their versions recomputed from the
   ledger (``adapters.sqlite.recompute``);
4. for the live offset, the batch's readings go to the committed-usage stream
   (``ports.stream``): the live counters add them, and just before COMMIT
   (:meth:`SqliteUsage.before_commit`, the writer's hook) every listener returns the alerts it
   fired, written in the same transaction.

So rollups, counters, fired alerts and the offset commit together or not at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.ingest import IngestState, live_meters
from meterline.adapters.sqlite.meters import current, query_rows, settled
from meterline.adapters.sqlite.recompute import applied_in_store, recompute, roots_in
from meterline.adapters.sqlite.replay import set_offset, stored_offset, write_replay
from meterline.domain.meters.model import Meter
from meterline.domain.meters.query import MeterQuery, Row
from meterline.ports.stream import Firing
from meterline.ports.usage import Backfill, Batch, Snapshot


class ConnUsage:
    """Meter queries answered on one connection (the writer's, inside its transaction)."""

    def __init__(self, conn: sqlite3.Connection, now_us: int) -> None:
        self._conn = conn
        self._now_us = now_us

    def query(self, meter: Meter, query: MeterQuery) -> list[Row]:
        return query_rows(self._conn, current(self._conn, meter), query, self._now_us)


def backfills(conn: sqlite3.Connection) -> list[Backfill]:
    rows = conn.execute(
        "SELECT key, backfill_done, backfill_to FROM meters"
        " WHERE deleted_us IS NULL AND backfill_done < backfill_to ORDER BY key"
    )
    return [Backfill(*row) for row in rows]


def write_firings(conn: sqlite3.Connection, firings: Sequence[Firing]) -> int:
    """Record each fired alert once per (rule, customer, feature, key, period) with its
    deliveries; returns how many were new."""
    new = 0
    for f in firings:
        cur = conn.execute(
            "INSERT OR IGNORE INTO notification_events VALUES (?,?,?,?,?,?,?,?,?)",
            (f.event_id, f.namespace, f.rule_id, f.customer, f.feature, f.key, f.period_start_us, f.payload, f.now_us),
        )
        if cur.rowcount == 0:
            continue
        new += 1
        conn.executemany(
            "INSERT INTO deliveries VALUES (?,?, 'PENDING', 0, ?, NULL, NULL, ?)",
            [(f.event_id, c, f.now_us, f.now_us) for c in f.channels],
        )
    return new


ERASURE_GENERATION_KEY = "erasure_generation"
"""In ``meta``: changed by every erasure pass (``adapters.sqlite.erasure``), in its transaction."""


def erasure_generation(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (ERASURE_GENERATION_KEY,)).fetchone()
    return "" if row is None else str(row[0])


class SqliteUsage:
    def __init__(self, db: Database, state: IngestState, now_us: Callable[[], int]) -> None:
        self._db = db
        self._state = state
        self._now_us = now_us
        self._generation = ""
        """``meta.erasure_generation`` as of the last snapshot: an erasure moved subjects since
        then when it differs, and the snapshot's known subjects are stale (batch refused)."""

    def snapshot(self) -> Snapshot:
        conn = self._db.reader()
        conn.execute("BEGIN")  # one consistent view of offset, meters and their values
        try:
            snap = Snapshot(stored_offset(conn), live_meters(conn), backfills=backfills(conn))
            for key, dim, value in conn.execute("SELECT meter, dim, value FROM group_values"):
                snap.group_values.setdefault((key, dim), set()).add(value)
            for key, subject in conn.execute("SELECT meter, subject FROM meter_subjects"):
                snap.subjects.setdefault(key, set()).add(subject)
            self._generation = erasure_generation(conn)
        finally:
            conn.execute("COMMIT")
        return snap

    def apply(self, batch: Batch) -> bool:
        return self._db.writer.call(lambda conn: self._apply(conn, batch), bounded=False)

    def query(self, meter: Meter, query: MeterQuery) -> list[Row]:
        settled(self._db, meter)
        return query_rows(self._db.reader(), meter, query, self._now_us())

    def _apply(self, conn: sqlite3.Connection, batch: Batch) -> bool:
        if not self._current(conn, batch):
            return False
        replay = batch.replay
        late = write_replay(conn, replay)
        if batch.backfill is not None:
            conn.execute("UPDATE meters SET backfill_done = ? WHERE key = ?", (batch.end, batch.backfill))
            roots = replay.corrected | roots_in(conn, batch.start, batch.end)
            if roots or late:
                self._state.load(conn)  # a meter created since the last live batch is in it only now
                meters = [m for ms in self._state.meters.values() for m in ms if m.meter.key == batch.backfill]
                applied = applied_in_store(conn, stored_offset(conn))
                recompute(conn, replay, meters, roots, applied, late=late)
            self._backfilled(conn, batch.backfill)
            return True
        set_offset(conn, batch.end)
        recounted: set[tuple[int, str]] = set()
        if replay.corrected or late:
            meters = [m for ms in self._state.meters.values() for m in ms]
            applied = applied_in_store(conn, batch.end)
            recounted = recompute(conn, replay, meters, replay.corrected, applied, late=late)
        listeners = self._state.listeners
        try:
            for listener in listeners:
                listener.add_many(replay.readings)
                if recounted:
                    listener.recount(recounted)
        except BaseException:
            for listener in listeners:  # the task rolls back alone: nothing of it may stay
                listener.rolled_back()
            raise
        return True

    def _current(self, conn: sqlite3.Connection, batch: Batch) -> bool:
        """Whether ``batch`` continues from the stored offset with the meters' current
        definitions (a ``groupBy`` change restarts a meter's backfill at 0: a batch computed
        before it must not land)."""
        if erasure_generation(conn) != self._generation:
            return False
        if batch.backfill is not None:
            row = conn.execute(
                "SELECT backfill_done, updated_us FROM meters WHERE key = ? AND deleted_us IS NULL", (batch.backfill,)
            ).fetchone()
            if row is None or row[0] != batch.start:
                return False
            return not batch.versions or batch.versions == {(batch.backfill, row[1])}
        if stored_offset(conn) != batch.start:
            return False
        self._state.load(conn)
        live = [m.meter for ms in self._state.meters.values() for m in ms]
        if batch.versions:
            return {(m.key, m.updated_us) for m in live} == batch.versions
        return {m.key for m in live} == batch.meters

    def _backfilled(self, conn: sqlite3.Connection, meter: int) -> None:
        """When this chunk completed the meter's backfill, what the listeners counted from its
        rollups while they were incomplete is read again in ``prepare`` (this transaction
        holds the last chunk)."""
        row = conn.execute("SELECT backfill_done >= backfill_to FROM meters WHERE key = ?", (meter,)).fetchone()
        if not row or not row[0] or not self._state.listeners:
            return
        pairs = [(meter, s) for (s,) in conn.execute("SELECT subject FROM meter_subjects WHERE meter = ?", (meter,))]
        try:
            for listener in self._state.listeners:
                listener.recount(pairs)
        except BaseException:
            for listener in self._state.listeners:
                listener.rolled_back()
            raise

    def before_commit(self, conn: sqlite3.Connection) -> None:
        """The writer's last step before COMMIT: the ledger position this commit publishes,
        and the alerts the stream's listeners fired (written in this transaction)."""
        self._state.committing_head = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        if not self._state.listeners:
            return
        usage = ConnUsage(conn, self._now_us())
        firings: list[Firing] = []
        for listener in self._state.listeners:
            firings.extend(listener.prepare(usage))
        if firings:
            write_firings(conn, firings)
