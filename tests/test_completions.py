"""Answers from another thread reach the event loop exactly, with one wake-up per burst."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from meterline.api.completions import Completions


def test_a_burst_resolved_by_another_thread_wakes_the_loop_once() -> None:
    async def main() -> tuple[list[object], int]:
        completions = Completions(asyncio.get_running_loop())
        futures: list[Future[int]] = [Future() for _ in range(200)]
        waiters = [completions.wait(f) for f in futures]
        release = threading.Event()

        def writer() -> None:  # like the writer thread: resolves a whole commit's futures in a row
            release.wait()
            for i, f in enumerate(futures):
                if i == 7:
                    f.set_exception(ValueError("seven"))
                else:
                    f.set_result(i)

        thread = threading.Thread(target=writer)
        thread.start()
        # the loop is busy (not awaiting) while the writer resolves the burst, as under load
        release.set()
        thread.join()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        return results, completions.wakeups

    results, wakeups = asyncio.run(main())
    assert [r for i, r in enumerate(results) if i != 7] == [i for i in range(200) if i != 7]
    assert isinstance(results[7], ValueError) and str(results[7]) == "seven"
    assert wakeups == 1


def test_every_waiter_is_answered_across_many_bursts() -> None:
    async def main() -> list[int]:
        completions = Completions(asyncio.get_running_loop())
        futures: list[Future[int]] = [Future() for _ in range(2000)]
        waiters = [completions.wait(f) for f in futures]

        def writer() -> None:
            for i, f in enumerate(futures):
                f.set_result(i)

        thread = threading.Thread(target=writer)
        thread.start()
        results = await asyncio.gather(*waiters)
        thread.join()
        assert 1 <= completions.wakeups <= len(futures)
        return results

    assert asyncio.run(main()) == list(range(2000))


def test_an_already_resolved_future_and_a_cancelled_waiter() -> None:
    async def main() -> None:
        completions = Completions(asyncio.get_running_loop())
        done: Future[str] = Future()
        done.set_result("now")
        assert await completions.wait(done) == "now"
        pending: Future[str] = Future()
        gone = completions.wait(pending)
        gone.cancel()
        later: Future[str] = Future()
        waiter = completions.wait(later)
        pending.set_result("nobody listens")
        later.set_result("heard")
        assert await waiter == "heard"
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(main())
