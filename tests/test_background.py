"""Supervised background loops: a failing step is logged with its traceback, counted and the
loop goes on; a dead or stuck loop is reported. Real threads; the stall clock is injected so
that no assertion depends on timing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from meterline.runtime.background import Loop, Monitor


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Worker:
    """A loop body fed one item at a time; items that are exceptions are raised by the step."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self.done: list[object] = []
        self.ready = threading.Semaphore(0)
        self.closed = False

    def feed(self, item: object) -> None:
        self.items.append(item)
        self.ready.release()

    def wait(self) -> bool:
        self.ready.acquire()
        return not self.closed

    def step(self) -> None:
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, threading.Event):
            item.wait(10)
        self.done.append(item)

    def close(self, loop: Loop) -> None:
        self.closed = True
        self.ready.release()
        loop.stop()
        loop.join(5)


def test_a_failing_step_is_logged_counted_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    monitor, worker = Monitor(), Worker()
    loop = Loop("w", worker.step, worker.wait, monitor, error_pause=0.0)
    loop.start()
    with caplog.at_level(logging.ERROR, logger="meterline.background"):
        worker.feed(KeyError("created"))
        worker.feed("next")
        wait_until(lambda: worker.done == ["next"])
    assert loop.errors == 1 and loop.is_alive()
    [record] = [r for r in caplog.records if r.name == "meterline.background"]
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert getattr(record, "loop", None) == "w"
    assert monitor.problems() == []
    worker.close(loop)
    assert not loop.is_alive()
    assert monitor.problems() == [], "a clean stop is not a death"


def test_a_stuck_step_is_reported_and_a_heartbeat_clears_it() -> None:
    clock = FakeMonotonic()
    monitor, worker = Monitor(stuck_after=60.0, now=clock), Worker()
    loop = Loop("slow", worker.step, worker.wait, monitor)
    loop.start()
    release = threading.Event()
    worker.feed(release)
    wait_until(lambda: worker.items == [])  # the step took it and is running
    clock.t += 61
    [status] = monitor.statuses()
    assert status.stuck and status.problem is not None and "'slow' is stuck" in status.problem
    loop.beat()
    assert monitor.problems() == []
    clock.t += 3600  # idle time is never a stall
    release.set()
    wait_until(lambda: worker.done == [release])
    assert monitor.problems() == []
    worker.close(loop)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_that_died_is_reported() -> None:
    monitor, worker = Monitor(), Worker()
    loop = Loop("fragile", worker.step, worker.wait, monitor)
    assert monitor.problems() == [], "a loop not started yet is not dead"
    loop.start()
    worker.feed(SystemExit(3))  # not an Exception: it ends the thread, as a bug in the loop itself would
    loop.join(5)
    assert monitor.problems() == ["background thread 'fragile' is dead"]
