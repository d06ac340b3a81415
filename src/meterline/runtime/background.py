"""Supervised background loops: kept alive through any exception, watched for death and stalls.

Every background thread of the server (the SQLite writer, meter backfill, alert dispatcher,
anomaly scanner, billing scheduler, health watch, dedupe pruner) is a :class:`Loop`: it alternates ``wait()``
(idle: blocked until there is work, or until its next tick) and ``step()`` (busy: one unit of
work). Guarantees:

1. An exception raised by ``step`` is logged with its traceback (logger
   ``meterline.runtime.background``, field ``loop``), counted for that loop, and the loop carries on
   after ``error_pause`` seconds. Only ``wait()`` returning False ends a loop (a clean stop).
2. A :class:`Monitor` sees every loop registered with it: a loop whose thread ended without a
   clean stop is *dead*; a loop busy in one step for longer than ``stuck_after`` seconds since
   its last heartbeat is *stuck*. Long steps call :meth:`Loop.beat` to show progress. Idle
   waiting is never stuck, however long it lasts.

``/readyz`` reports dead and stuck loops (operational code METER-005) and ``/metrics``
exports ``meterline_background_errors_total{thread=...}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("meterline.background")


@dataclass(frozen=True, slots=True)
class LoopStatus:
    """A snapshot of one loop, as :class:`Monitor` sees it."""

    name: str
    started: bool
    alive: bool
    """The thread runs."""
    stopped: bool
    """The loop ended cleanly (its owner stopped it)."""
    busy_for: float
    """Seconds since the current step began or last beat; 0 while idle."""
    errors: int
    stuck: bool

    @property
    def problem(self) -> str | None:
        """Why this loop is unhealthy, or None."""
        if self.started and not self.alive and not self.stopped:
            return f"background thread {self.name!r} is dead"
        if self.stuck:
            return f"background thread {self.name!r} is stuck: no progress for {self.busy_for:.0f} s in one step"
        return None


class Monitor:
    """The loops of one server process: their liveness, heartbeats and error counts."""

    def __init__(self, stuck_after: float = 120.0, now: Callable[[], float] = time.monotonic) -> None:
        self.stuck_after = stuck_after
        self.now = now
        self._loops: dict[str, Loop] = {}
        self._lock = threading.Lock()

    def add(self, loop: Loop) -> None:
        with self._lock:
            self._loops[loop.name] = loop

    def statuses(self) -> list[LoopStatus]:
        with self._lock:
            loops = list(self._loops.values())
        return [loop.status(self.now(), self.stuck_after) for loop in loops]

    def problems(self) -> list[str]:
        """One sentence per dead or stuck loop (empty when all are well)."""
        return [p for s in self.statuses() if (p := s.problem) is not None]


class Loop:
    """Runs ``step`` after each ``wait()`` on a daemon thread named ``meterline-<name>``.

    ``wait`` blocks until there is work and returns True, or returns False to stop the loop.
    ``error_pause`` is how long to back off after a failed step (interrupted by :meth:`stop`).
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        wait: Callable[[], bool],
        monitor: Monitor | None = None,
        *,
        error_pause: float = 1.0,
    ) -> None:
        self.name = name
        self._step, self._wait = step, wait
        self._monitor = monitor or Monitor()
        self._now = self._monitor.now
        self._error_pause = error_pause
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"meterline-{name}", daemon=True)
        self._busy_since: float | None = None
        self._started = False
        self._stopped = False
        self.errors = 0
        self._monitor.add(self)

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        """Interrupt an error pause; the owner also makes ``wait`` return False."""
        self._halt.set()

    def join(self, timeout: float | None = None) -> None:
        if self._started:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def beat(self) -> None:
        """A long step shows progress: the stall clock starts again from now."""
        if self._busy_since is not None:
            self._busy_since = self._now()

    def status(self, now: float, stuck_after: float) -> LoopStatus:
        since = self._busy_since
        busy_for = 0.0 if since is None else max(0.0, now - since)
        return LoopStatus(
            self.name,
            self._started,
            self._thread.is_alive(),
            self._stopped,
            busy_for,
            self.errors,
            busy_for > stuck_after,
        )

    def _run(self) -> None:
        try:
            while True:
                ok, more = self._attempt(self._wait)
                if ok and not more:
                    break
                if not ok:
                    if self._halt.is_set():
                        break
                    continue
                self._busy_since = self._now()
                self._attempt(self._step)
                self._busy_since = None
        except BaseException:
            log.critical("background thread ended by an error", exc_info=True, extra={"loop": self.name})
            raise
        self._stopped = True

    def _attempt(self, fn: Callable[[], object]) -> tuple[bool, object]:
        try:
            return True, fn()
        except Exception:
            self.errors += 1
            self._busy_since = None
            log.exception("background step failed; the loop goes on", extra={"loop": self.name})
            self._halt.wait(self._error_pause)
            return False, None


class Ticker:
    """A :class:`Loop` that runs ``step`` every ``interval()`` seconds (the first time after one
    interval) until :meth:`close`. ``interval`` is read before every wait, so an owner may
    change its pace (the dedupe pruner backs off after a busy batch)."""

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        interval: Callable[[], float],
        monitor: Monitor | None = None,
        *,
        error_pause: float = 1.0,
    ) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self.loop = Loop(name, step, self._wait, monitor, error_pause=error_pause)

    def start(self) -> None:
        self.loop.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the current step (waiting at most ``timeout`` seconds for it)."""
        self._stop.set()
        self.loop.stop()
        self.loop.join(timeout)

    def _wait(self) -> bool:
        return not self._stop.wait(self._interval())
