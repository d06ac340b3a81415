"""Answers from the writer thread reach the event loop with one wake-up per group commit.

``asyncio.wrap_future`` wakes the event loop once per future (a ``call_soon_threadsafe``
each: a write to the loop's self-pipe, a pass of the selector). The writer resolves all the
futures of one commit one after another, so :class:`Completions` gathers them: the first
resolved future of a burst schedules one drain on the loop, the others only join the list,
and the drain resolves every waiting asyncio future in that one pass.

Guarantees: every future handed to :meth:`Completions.wait` is answered with exactly the
result or exception of its concurrent future, never before that future resolves. A waiter
that was cancelled (its request is gone) is skipped; the write itself goes on (it is queued
or committed already; cancelling a write half-way is not possible).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Done = tuple[asyncio.Future[Any], Future[Any]]


class Completions:
    """Bridges concurrent futures to asyncio futures of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._done: list[_Done] = []
        self.wakeups = 0
        """Drains scheduled so far (for tests and benchmarks)."""

    def wait(self, future: Future[T]) -> asyncio.Future[T]:
        """An asyncio future of this loop resolved like ``future``. Call on the loop's thread."""
        waiter: asyncio.Future[T] = self.loop.create_future()
        future.add_done_callback(lambda f: self._resolved(waiter, f))
        return waiter

    def _resolved(self, waiter: asyncio.Future[Any], future: Future[Any]) -> None:
        """Any thread (usually the writer): queue the pair; the first of a burst wakes the loop."""
        with self._lock:
            self._done.append((waiter, future))
            first = len(self._done) == 1
        if first and not self.loop.is_closed():  # a closed loop has no one left to answer
            self.wakeups += 1
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for waiter, future in done:
            if waiter.cancelled():
                continue
            if future.cancelled():
                waiter.cancel()
                continue
            exc = future.exception()
            if exc is None:
                waiter.set_result(future.result())
            else:
                waiter.set_exception(exc)
