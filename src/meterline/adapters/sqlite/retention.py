"""Removing raw ledger events past ``retention.raw_events``, keeping their place in the chain.

An entry is removed (pruned) when all of these hold, walking the ledger in sequence order from
a cursor (``meta.retention_pruned_seq``); the walk stops at the first entry that fails one:

1. its event time and its receipt are both older than ``now - raw_events`` (the config makes
   ``ingest.late_arrival_window`` at most that long, so no new event can land in its hour);
2. the aggregator applied it (``seq <= meta.aggregated_seq``) and no meter's backfill still has
   to read it: its rollups, the totals and invoices resting on them are whole;
3. the dedupe pruner already passed it (``seq <= meta.dedupe_pruned_seq``): its key is expired
   (the config makes ``ingest.dedupe_window`` at most ``raw_events``), so a resend is new
   whether the row is there or not, and removing it changes no answer;
4. it is not the last entry of the ledger (the next sequence number and the recorded head are
   read from it);
5. it still matches the chain: its content digest (or, for an erased entry, its erased form and
   the digest kept from before the erasure) links from the stored hash before it to its own
   stored hash. An entry edited by hand is never removed (that would launder the edit into a
   kept digest): pruning stops there, says so (``blocked``) and ``meterline verify`` names it.

Each batch is one writer task (``retention.prune_batch`` entries, about a millisecond): it moves
each entry's kept digest, stored hash and keyed key hash into ``ledger_pruned`` (the documented
"pruned" marker ``verify`` links through), deletes the ``events`` row (``secure_delete`` zeroes
it), and raises ``meta.retention_hours_before``: hours before it may lack raw events, their
rollups are authoritative (``rebuild`` keeps them, corrections in them are refused).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meterline.adapters.sqlite.chain import ENTRY_ROWS, entry_content, read_format
from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.dedupe_prune import CURSOR_KEY as DEDUPE_CURSOR_KEY
from meterline.adapters.sqlite.dedupe_prune import read_meta, write_meta
from meterline.adapters.sqlite.ingest import IngestState
from meterline.adapters.sqlite.replay import OFFSET_KEY
from meterline.domain.errors import Overloaded, StorageUnavailable
from meterline.domain.integrity.chain import GENESIS, ChainFormat, link
from meterline.runtime.background import Ticker

log = logging.getLogger("meterline.retention")

CURSOR_KEY = "retention_pruned_seq"
HOURS_BEFORE_KEY = "retention_hours_before"
COUNT_KEY = "retention_pruned_count"
HOUR_US = 3_600_000_000


@dataclass(frozen=True, slots=True)
class RetentionStatus:
    """What ``/metrics`` and the store's status show."""

    raw_events_us: int | None
    pruned: int
    """Entries removed so far (all time)."""
    pruned_through: int
    """The cursor: every entry up to it was removed or is a kept last entry."""
    hours_before_us: int
    """Hours before this may lack raw events (0: nothing removed)."""
    blocked: str | None
    """Why pruning stopped at an entry that does not match the chain (None: it does not)."""


class RetentionPruner:
    """:meth:`prune_once` runs one batch; :meth:`start` keeps doing it in the background."""

    def __init__(
        self,
        db: Database,
        state: IngestState,
        now_us: Callable[[], int],
        raw_events_us: int | None,
        *,
        batch: int = 500,
        idle: float = 5.0,
        pause: float = 0.01,
    ) -> None:
        self._db = db
        self._state = state
        self._now_us = now_us
        self.raw_events_us = raw_events_us
        self._batch = batch
        self._idle = idle
        self._pause = pause
        self._delay = idle
        self._task_seconds = 0.0
        self.blocked: str | None = None
        self._ticker = Ticker("retention", self._step, lambda: self._delay, db.monitor, error_pause=idle)

    def start(self) -> None:
        """Prune in the background when ``retention.raw_events`` is set."""
        if self.raw_events_us is not None:
            self._ticker.start()

    def close(self) -> None:
        self._ticker.close(timeout=10)

    def prune_once(self) -> int:
        """Remove up to one batch of expired entries; returns how many were removed."""
        if self.raw_events_us is None:
            return 0
        removed: int = self._db.writer.call(self._timed)
        return removed

    def status(self) -> RetentionStatus:
        conn = self._db.reader()
        return RetentionStatus(
            self.raw_events_us,
            read_meta(conn, COUNT_KEY),
            read_meta(conn, CURSOR_KEY),
            read_meta(conn, HOURS_BEFORE_KEY),
            self.blocked,
        )

    def _step(self) -> None:
        self._delay = self._idle
        try:
            removed = self.prune_once()
        except (Overloaded, StorageUnavailable):
            return  # the writer is busy or failing (and says so itself): try again later
        if removed == self._batch:
            # Work is left: go on soon, but leave the writer to ingest at least 4/5 of its time.
            self._delay = max(self._pause, 4 * self._task_seconds)

    def _timed(self, conn: sqlite3.Connection) -> int:
        started = time.perf_counter()
        try:
            return self._prune(conn)
        finally:
            self._task_seconds = time.perf_counter() - started

    def _prune(self, conn: sqlite3.Connection) -> int:
        assert self.raw_events_us is not None
        cutoff = self._now_us() - self.raw_events_us
        cursor = read_meta(conn, CURSOR_KEY)
        rows = conn.execute(ENTRY_ROWS, (cursor, self._batch)).fetchall()
        if not rows:
            return 0
        limit = _limit(conn, rows[-1][0])
        erased = _erased(conn, cursor, rows[-1][0])
        prev = _hash_before(conn, rows[0][0])
        fmt = read_format(conn)
        marks, latest = [], 0
        for row in rows:
            seq, time_us, received_us, stored = row[0], row[6], row[7], row[10]
            if seq > limit or time_us >= cutoff or received_us >= cutoff:
                break
            kept = self._matching(row, prev, erased.get(seq), fmt)
            if kept is None:
                break
            key_hash = erased[seq][2] if seq in erased else self._state.dedupe.key_hash(row[1], row[2], row[3])
            marks.append((seq, kept, stored, key_hash))
            prev, latest = stored, max(latest, time_us)
        if marks:
            self._write(conn, cursor, marks, latest)
        return len(marks)

    def _matching(
        self, row: tuple[object, ...], prev: bytes | None, erased: tuple[bytes, bytes, int] | None, fmt: ChainFormat
    ) -> bytes | None:
        """The digest the chain links for ``row`` when it still matches the chain, else None
        (and pruning is blocked at it)."""
        seq, stored, content = row[0], row[10], entry_content(row, fmt)
        kept = content
        if erased is not None:
            kept = erased[0] if content == erased[1] else b""
        if prev is not None and isinstance(stored, bytes) and kept and link(prev, int(str(seq)), kept) == stored:
            self.blocked = None
            return kept
        if self.blocked is None:
            log.error(
                "retention stopped at ledger entry %s: it does not match the hash chain; run meterline verify", seq
            )
        self.blocked = f"entry {seq} does not match the hash chain (run meterline verify); nothing after it is removed"
        return None

    def _write(
        self, conn: sqlite3.Connection, cursor: int, marks: Sequence[tuple[object, ...]], latest_us: int
    ) -> None:
        """The marks are a prefix of the entries after ``cursor``: the range (cursor, last] goes."""
        last = int(str(marks[-1][0]))
        conn.executemany("INSERT INTO ledger_pruned (seq, kept, chain, key_hash) VALUES (?,?,?,?)", marks)
        conn.execute("DELETE FROM events WHERE seq > ? AND seq <= ?", (cursor, last))
        # the entries kept in memory for the aggregator still carry them: a new meter's backfill
        # reading from 0 would fold them from there (harmless if this rolls back: the table is read)
        self._state.recent.forget_through(last)
        # ``ledger_erased`` rows stay (digests and a keyed hash only): the erasure chain links them
        write_meta(conn, CURSOR_KEY, last)
        write_meta(conn, COUNT_KEY, read_meta(conn, COUNT_KEY) + len(marks))
        hour_end = (latest_us // HOUR_US + 1) * HOUR_US
        write_meta(conn, HOURS_BEFORE_KEY, max(hour_end, read_meta(conn, HOURS_BEFORE_KEY)))


def _limit(conn: sqlite3.Connection, last: int) -> int:
    """The last seq this batch may remove: aggregated, passed by the dedupe pruner, read by every
    backfill, and before the ledger's last entry."""
    newest = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    backfill = conn.execute(
        "SELECT min(backfill_done) FROM meters WHERE deleted_us IS NULL AND backfill_done < backfill_to"
    ).fetchone()[0]
    limits = [last, newest - 1, read_meta(conn, OFFSET_KEY), read_meta(conn, DEDUPE_CURSOR_KEY)]
    if backfill is not None:
        limits.append(int(backfill))
    return min(limits)


def _erased(conn: sqlite3.Connection, after: int, last: int) -> dict[int, tuple[bytes, bytes, int]]:
    rows = conn.execute(
        "SELECT seq, kept, content, key_hash FROM ledger_erased WHERE seq > ? AND seq <= ?", (after, last)
    )
    return {seq: (bytes(kept), bytes(content), int(key_hash)) for seq, kept, content, key_hash in rows}


def _hash_before(conn: sqlite3.Connection, seq: int) -> bytes | None:
    """The stored hash of entry ``seq - 1`` (pruned or not); None when it is missing."""
    if seq == 1:
        return GENESIS
    for table in ("events", "ledger_pruned"):
        row = conn.execute(f"SELECT chain FROM {table} WHERE seq = ?", (seq - 1,)).fetchone()
        if row is not None:
            return bytes(row[0]) if isinstance(row[0], bytes) else None
    return None


def hours_before(conn: sqlite3.Connection) -> int:
    """Hours before this may lack raw events (0: nothing was ever removed)."""
    return read_meta(conn, HOURS_BEFORE_KEY)


def pruned_key(conn: sqlite3.Connection, key_hash: int) -> bool:
    """Whether an entry with this keyed key hash was removed by retention."""
    return conn.execute("SELECT 1 FROM ledger_pruned WHERE key_hash = ? LIMIT 1", (key_hash,)).fetchone() is not None
