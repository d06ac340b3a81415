"""The single writer thread and its group commit.

Every write goes through :meth:`Writer.submit`. The thread takes the first waiting task, then
drains every other waiting task (up to ``max_batch`` tasks and ``max_weight`` events; a task is
never split) into the *same* transaction and commits once: concurrent requests share one
fsync, and under a backlog the first requests are answered after one bounded transaction
instead of one huge one. Each task runs inside its own SAVEPOINT,
so a task that raises is rolled back alone and the others still commit.

Tasks submitted with the same ``together`` runner (ingest's appends) that follow one another
in a transaction run as one call of that runner, inside one SAVEPOINT: a single-event request
then costs no statement, savepoint or lookup of its own. The runner must give each task the
value it would have had run alone after the one before it. If the runner raises, its SAVEPOINT
is rolled back and each of its tasks runs alone, so a task that raises is still refused alone.

``before_commit`` runs once per transaction, after the last task and before COMMIT: ingest
uses it to upsert the rollup deltas of all the transaction's requests folded together.
``after_commit`` runs after COMMIT and before any future resolves, so in-memory state
published there (live entitlement counters) is visible to a caller as soon as it hears "done".

Guarantees:

- A task's future resolves only after the COMMIT that contains it returned. A future that
  resolves with a result therefore means durable (per the ``fsync`` setting); if
  ``before_commit`` or the COMMIT itself fails, every task of that transaction gets
  :class:`StorageUnavailable`, and that answer is final: a failed COMMIT is healed before any
  future resolves, so its work never reappears after a restart (``faults.py``).
- The queue is bounded: beyond ``max_queue`` waiting tasks, :meth:`submit` raises
  :class:`Overloaded` at once instead of queueing without limit.
- :attr:`available` is False from a failed transaction until a commit succeeds again. While
  it is False and no work arrives, the thread probes the store every ``probe_interval``
  seconds with a heal transaction, so health comes back without traffic.
- The thread is a supervised :class:`~meterline.runtime.background.Loop`: a bug never stops it, and
  every task it took gets an answer.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from meterline.adapters.sqlite import faults
from meterline.domain.errors import MeterlineError, Overloaded, StorageUnavailable
from meterline.runtime.background import Loop, Monitor

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]
Together = Callable[[sqlite3.Connection, list[Any]], list[Any]]
"""Runs consecutive tasks (their ``Work`` objects, in order) as one; returns each one's value."""
Task = tuple[Work, Future[Any], int, Together | None]  # work, answer, weight (events), runner

log = logging.getLogger("meterline.writer")

_STOP: Any = object()
EXIT_STORAGE = 74  # EX_IOERR: the process stops rather than risk a refused write reappearing


class Writer:
    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        reconnect: Callable[[], sqlite3.Connection] | None = None,
        max_batch: int = 256,
        max_weight: int = 100_000,
        max_queue: int = 4096,
        on_rollback: Callable[[bool], None] | None = None,
        before_commit: Callable[[sqlite3.Connection], None] | None = None,
        after_commit: Callable[[], None] | None = None,
        monitor: Monitor | None = None,
        probe_interval: float = 1.0,
    ) -> None:
        self._conn = conn
        self._reconnect = reconnect
        self._after_commit = after_commit
        self._queue: queue.SimpleQueue[Task | Any] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._max_weight = max_weight
        self._max_queue = max_queue
        self._on_rollback = on_rollback
        self._before_commit = before_commit
        self._probe_interval = probe_interval
        self._first: Task | None = None
        self._carry: Task | None = None  # taken from the queue, but for the next transaction
        self._stopping = False
        self.commits = 0
        self.available = True
        self.failure: str | None = None
        """Why the store is unavailable (for /readyz), None while it is available."""
        self._loop = Loop("writer", self._step, self._wait, monitor, error_pause=0.0)
        self._loop.start()

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        bounded: bool = True,
        weight: int = 1,
        together: Together | None = None,
    ) -> Future[T]:
        """Queue ``fn`` for the next transaction. ``weight`` is its size in events (for
        ``max_weight``). ``bounded=False`` is for the server's own background loops (a handful
        of tasks at most), which must not be refused. ``together``: a runner that may run
        ``fn`` with the tasks next to it that have the same runner (see the module's doc)."""
        if bounded and self._queue.qsize() >= self._max_queue:
            raise Overloaded(f"The write queue holds {self._max_queue} tasks; retry shortly", code="overloaded")
        future: Future[T] = Future()
        self._queue.put((fn, future, weight, together))
        return future

    def call(self, fn: Callable[[sqlite3.Connection], T], *, bounded: bool = True) -> T:
        """Submit and wait (for callers that are not on an event loop)."""
        return self.submit(fn, bounded=bounded).result()

    def queued(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._loop.stop()
        self._loop.join()

    # The loop: ``_wait`` is idle time, ``_step`` one transaction (or one probe).
    def _wait(self) -> bool:
        if self._carry is not None:
            self._first, self._carry = self._carry, None
            return True
        if self._stopping:
            return False
        try:
            task = self._queue.get(timeout=None if self.available else self._probe_interval)
        except queue.Empty:
            return True  # no work while unavailable: _step probes the store
        if task is _STOP:
            return False
        self._first = task
        return True

    def _step(self) -> None:
        first, self._first = self._first, None
        if first is None:
            self._probe()
            return
        batch = [first]
        self._stopping = self._drain(batch)
        try:
            self._commit(batch)
        finally:
            self._answer_unanswered(batch)

    def _drain(self, batch: list[Task]) -> bool:
        weight = batch[0][2]
        while len(batch) < self._max_batch and weight < self._max_weight:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                return False
            if task is _STOP:
                return True
            if weight + task[2] > self._max_weight:
                self._carry = task
                return False
            batch.append(task)
            weight += task[2]
        return False

    def _commit(self, batch: list[Task]) -> None:
        results: list[tuple[Future[Any], bool, Any]] = []
        conn = self._conn
        at_commit = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            for tasks, together in _runs(batch):
                if together is None or len(tasks) == 1:
                    results.append((tasks[0][1], *self._run_task(tasks[0][0])))
                else:
                    outcomes = self._run_together(together, [task[0] for task in tasks])
                    results.extend((task[1], ok, value) for task, (ok, value) in zip(tasks, outcomes, strict=True))
            if self._before_commit is not None:
                self._before_commit(conn)
            at_commit = True
            conn.execute("COMMIT")
        except Exception as exc:
            self._failed(batch, exc, at_commit)
            return
        self.commits += 1
        self._recovered()
        try:
            if self._after_commit is not None:
                self._after_commit()
        finally:  # committed is committed: the callers hear it even if publishing failed
            for future, ok, value in results:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _failed(self, batch: list[Task], exc: Exception, at_commit: bool) -> None:
        """The whole transaction is gone: make sure it stays gone, then tell every caller."""
        log.error("commit failed: %s", faults.describe(exc), extra={"operationalCode": "METER-001"})
        faults.rollback(self._conn)
        self.available, self.failure = False, f"the last commit failed ({faults.name(exc)})"
        if at_commit or faults.io_failure(exc):
            self._reset(exc, at_commit)
        if self._on_rollback is not None:
            self._on_rollback(True)
        error = StorageUnavailable("The store could not commit; nothing of this request was recorded")
        for _, future, _, _ in batch:
            future.set_exception(error)

    def _reset(self, exc: Exception, at_commit: bool) -> None:
        """Trust no state of the failed connection: open a fresh one, then heal (faults.py)."""
        if self._reconnect is not None:
            try:
                fresh = self._reconnect()  # opened before the old one closes: the WAL index stays
            except Exception as open_exc:
                log.error(
                    "could not reopen the store: %s", faults.describe(open_exc), extra={"operationalCode": "METER-001"}
                )
            else:
                old, self._conn = self._conn, fresh
                try:
                    old.close()
                except sqlite3.Error:
                    pass  # it is dropped either way
        heal_exc = self._heal()
        if not faults.healed(heal_exc) and at_commit and faults.may_leave_commit(exc):
            assert heal_exc is not None
            self._halt(exc, heal_exc)

    def _heal(self, quiet: bool = False) -> Exception | None:
        try:
            faults.heal(self._conn)
        except Exception as exc:
            if not quiet:
                log.error("heal transaction failed: %s", faults.describe(exc), extra={"operationalCode": "METER-001"})
            return exc
        self.commits += 1
        self._recovered()
        return None

    def _probe(self) -> None:
        """While unavailable and idle: try to commit (quietly: the failure was logged already)."""
        if not self.available:
            self._heal(quiet=True)

    def _recovered(self) -> None:
        if not self.available:
            log.warning("the store commits again", extra={"operationalCode": "METER-001"})
        self.available, self.failure = True, None

    def _halt(self, exc: Exception, heal_exc: Exception) -> None:
        log.critical(
            "a failed commit may remain in the write-ahead log and it could not be overwritten"
            " (%s, then %s); stopping the process so that no caller is told it was not recorded",
            faults.describe(exc),
            faults.describe(heal_exc),
            extra={"operationalCode": "METER-001"},
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_STORAGE)

    def _answer_unanswered(self, batch: list[Task]) -> None:
        """A bug above must not leave a caller waiting forever."""
        for _, future, _, _ in batch:
            if not future.done():
                future.set_exception(StorageUnavailable("An internal error stopped this write; nothing was recorded"))

    def _run_together(self, together: Together, work: list[Work]) -> list[tuple[bool, Any]]:
        """Consecutive tasks with one runner: one SAVEPOINT, one call. If the call raises, it is
        undone and every task runs alone, so only a task that fails alone is refused."""
        conn = self._conn
        conn.execute("SAVEPOINT tasks")
        try:
            values = together(conn, work)
            if len(values) != len(work):
                raise RuntimeError(f"a runner of {len(work)} tasks answered {len(values)} values")
        except Exception as exc:
            if not isinstance(exc, MeterlineError):
                log.warning("write tasks run together failed; running them one by one", exc_info=True)
            conn.execute("ROLLBACK TO tasks")
            conn.execute("RELEASE tasks")
            if self._on_rollback is not None:
                self._on_rollback(False)
            return [self._run_task(fn) for fn in work]
        conn.execute("RELEASE tasks")
        return [(True, value) for value in values]

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


def _runs(batch: list[Task]) -> list[tuple[list[Task], Together | None]]:
    """The batch cut into runs of consecutive tasks that share a ``together`` runner (a task
    without one is a run of its own), in order."""
    runs: list[tuple[list[Task], Together | None]] = []
    for task in batch:
        together = task[3]
        if together is not None and runs and runs[-1][1] is together:
            runs[-1][0].append(task)
        else:
            runs.append(([task], together))
    return runs
