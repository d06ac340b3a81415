"""Forgetting idempotency keys once they are past the dedupe window.

With ``ingest.dedupe_window`` set, a key whose first receipt is older than ``now - window`` is
*expired*: ingest treats the same (namespace, source, id) as a new event. The pruner forgets
expired keys a grace period later (``GRACE``), in small batches, each a writer task of its own:
it joins a group commit like any request and holds the writer for about a millisecond, and it
runs from a background thread, so no ingest request waits for more than one batch. Without a
window nothing is pruned (keys are kept forever).

Exactness — deleting a key never changes what ingest answers:

1. The floor (``meta.dedupe_floor_us``) only rises; a batch raises it to ``now - window - GRACE``
   and deletes only keys received before it.
2. Ingest's lookup treats every key received before ``max(now - window, floor)`` as expired,
   deleted yet or not. Keys between the floor and ``now - window`` are still kept, so a clock
   that steps back by up to ``GRACE`` sees them as duplicates again, as it would without pruning;
   past that, a key before the floor is expired whether or not its batch has run.
3. A batch forgets a key only while it still belongs to the ledger event it came with (a key
   reused after expiry belongs to its new event).
4. The floor and the cursor commit in one transaction (or not at all); only after that commit
   does the dedupe index (``adapters.sqlite.dedupe_index``) drop the batch's keys from memory,
   and delete whole sealed runs whose newest key was received before the floor.

The pruner walks the ledger in sequence order from a cursor (``meta.dedupe_pruned_seq``): no
index on receipt time, so nothing is added to the ingest path. The walk stops at the first event
received after the floor; an event received out of order (the clock stepped back) waits until the
walk reaches it. Keys of events held in quarantine stay until the event is released (it then
gets a key of its own in the ledger) or purged.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.ingest import DEDUPE_FLOOR_KEY, IngestState
from meterline.domain.errors import Overloaded, StorageUnavailable
from meterline.runtime.background import Ticker

GRACE_US = 3_600_000_000  # keys are deleted an hour after they expire
BATCH = 500  # keys per writer task: about a millisecond of the writer's time
CURSOR_KEY = "dedupe_pruned_seq"


class DedupePruner:
    """Deletes expired keys: :meth:`prune_once` runs one batch; :meth:`start` keeps doing it."""

    def __init__(
        self,
        db: Database,
        state: IngestState,
        now_us: Callable[[], int],
        *,
        batch: int = BATCH,
        idle: float = 1.0,
        pause: float = 0.01,
    ) -> None:
        self._db = db
        self._state = state
        self._now_us = now_us
        self._window_us = state.settings.dedupe_window_us
        self._batch = batch
        self._idle = idle  # seconds between looks when nothing was left to delete
        self._pause = pause  # least seconds between two full batches: ingest gets the writer in between
        self._delay = idle
        self._ticker = Ticker("dedupe-prune", self._step, lambda: self._delay, db.monitor, error_pause=idle)
        self.pruned = 0
        self._task_seconds = 0.0  # the writer's time for the last batch

    def start(self) -> None:
        """Prune in the background (only when a dedupe window is configured), on a supervised
        loop: a failed batch (the store may be failing) is logged, counted and tried again later."""
        if self._window_us is not None:
            self._ticker.start()

    def close(self) -> None:
        self._ticker.close(timeout=10)

    def prune_once(self) -> int:
        """Delete the keys of up to one batch of expired ledger events; returns how many events
        were passed (``pruned`` counts the keys deleted)."""
        if self._window_us is None or not self._due():
            return 0
        walked, expired, floor = self._db.writer.call(self._delete_batch)
        if expired:
            self.pruned += self._state.dedupe.forget(expired, floor)
        return walked

    def _step(self) -> None:
        self._delay = self._idle
        try:
            walked = self.prune_once()
        except (Overloaded, StorageUnavailable):
            return  # the writer is busy or failing (and says so itself): try again later
        if walked == self._batch:
            # Work is left: go on soon, but leave the writer to ingest at least 4/5 of its time.
            self._delay = max(self._pause, 4 * self._task_seconds)

    def _floor(self) -> int:
        assert self._window_us is not None
        return self._now_us() - self._window_us - GRACE_US

    def _due(self) -> bool:
        """Whether the next event after the cursor is expired (read-only: an idle pruner costs
        one indexed read per look, never a commit)."""
        sql = (
            "SELECT received_us FROM events"
            " WHERE seq > coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?), 0)"
            " ORDER BY seq LIMIT 1"
        )
        row = self._db.reader().execute(sql, (CURSOR_KEY,)).fetchone()
        return row is not None and row[0] < self._floor()

    def _delete_batch(self, conn: sqlite3.Connection) -> tuple[int, list[tuple[str, str, str, int]], int]:
        """One writer task: advance the floor and the cursor over expired events; returns how
        many were passed, their keys (forgotten once this commits) and the floor."""
        started = time.perf_counter()
        try:
            return self._delete(conn)
        finally:
            self._task_seconds = time.perf_counter() - started

    def _delete(self, conn: sqlite3.Connection) -> tuple[int, list[tuple[str, str, str, int]], int]:
        self._state.load(conn)
        floor = max(self._floor(), self._state.dedupe_floor_us)
        cursor = read_meta(conn, CURSOR_KEY)
        rows = conn.execute(
            "SELECT seq, namespace, source, id, received_us FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (cursor, self._batch),
        )
        expired = []
        for seq, namespace, source, id_, received_us in rows:
            if received_us >= floor:
                break
            expired.append((namespace, source, id_, seq))
        if not expired:
            return 0, [], floor
        write_meta(conn, DEDUPE_FLOOR_KEY, floor)
        write_meta(conn, CURSOR_KEY, expired[-1][3])
        self._state.dedupe_floor_us = floor  # a rollback marks the state stale: it reloads the old one
        return len(expired), expired, floor


def read_meta(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return 0 if row is None else int(row[0])


def write_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))
