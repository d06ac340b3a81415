"""The single writer thread and its group commit.

Every write goes through :meth:`Writer.submit`. The thread takes the first waiting task, then
drains every other waiting task (up to ``max_batch`` tasks) into the *same* transaction and
commits once: concurrent requests share one fsync. Each task runs inside its own SAVEPOINT,
so a task that raises is rolled back alone and the others still commit.

``before_commit`` runs once per transaction, after the last task and before COMMIT: ingest
uses it to upsert the rollup deltas of all the transaction's requests folded together.
``after_commit`` runs after COMMIT and before any future resolves, so in-memory state
published there (live entitlement counters) is visible to a caller as soon as it hears "done".

Guarantee: a task's future resolves only after the COMMIT that contains it returned. A
future that resolves with a result therefore means durable (per the ``fsync`` setting); if
``before_commit`` or the COMMIT itself fails, every task of that transaction gets the error.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from meterline.errors import MeterlineError, StorageUnavailable

T = TypeVar("T")
Task = tuple[Callable[[sqlite3.Connection], Any], Future[Any]]

log = logging.getLogger("meterline.writer")

_STOP: Any = object()


class Writer:
    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        max_batch: int = 256,
        on_rollback: Callable[[bool], None] | None = None,
        before_commit: Callable[[sqlite3.Connection], None] | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._conn = conn
        self._after_commit = after_commit
        self._queue: queue.SimpleQueue[Task | Any] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._on_rollback = on_rollback
        self._before_commit = before_commit
        self._thread = threading.Thread(target=self._run, name="meterline-writer", daemon=True)
        self._thread.start()
        self.commits = 0

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((fn, future))
        return future

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Submit and wait (for callers that are not on an event loop)."""
        return self.submit(fn).result()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = self._drain(batch)
            self._commit(batch)
            if stop:
                return

    def _drain(self, batch: list[Task]) -> bool:
        while len(batch) < self._max_batch:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                return False
            if task is _STOP:
                return True
            batch.append(task)
        return False

    def _commit(self, batch: list[Task]) -> None:
        results: list[tuple[Future[Any], bool, Any]] = []
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future in batch:
                results.append((future, *self._run_task(fn)))
            if self._before_commit is not None:
                self._before_commit(conn)
            conn.execute("COMMIT")
            self.commits += 1
            if self._after_commit is not None:
                self._after_commit()
        except Exception as exc:
            log.error("commit failed", extra={"error": repr(exc)})
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if self._on_rollback is not None:
                self._on_rollback(True)
            error = StorageUnavailable("The store could not commit; nothing of this request was recorded")
            for _, future in batch:
                future.set_exception(error)
            return
        for future, ok, value in results:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _run_task(self, fn: Callable[[sqlite3.Connection], Any]) -> tuple[bool, Any]:
        conn = self._conn
        conn.execute("SAVEPOINT task")
        try:
            value = fn(conn)
        except MeterlineError as exc:
            conn.execute("ROLLBACK TO task")
            conn.execute("RELEASE task")
            if self._on_rollback is not None:
                self._on_rollback(False)
            return False, exc
        except Exception:  # a bug in a task must not take the writer down
            log.exception("write task failed")
            conn.execute("ROLLBACK TO task")
            conn.execute("RELEASE task")
            if self._on_rollback is not None:
                self._on_rollback(False)
            return False, StorageUnavailable("An internal error stopped this write; nothing of it was recorded")
        conn.execute("RELEASE task")
        return True, value
