"""The FollowerProgress contract (``ports.sink``): where each follower of the sink workers
stands per stream, moved forward only, shared by every handle on the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from postgres_server import fresh_schema, server

from meterline.adapters.memory.progress import MemoryProgress
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.progress import PgProgress

KINDS = ["memory", "postgres"]


@contextmanager
def opened(kind: str) -> Iterator[tuple[Any, Callable[[], Any]]]:
    """A store and a way to open another handle on the same one (another worker)."""
    if kind == "memory":
        store = MemoryProgress()
        yield store, lambda: store
        return
    with fresh_schema(server()) as dsn:
        dbs = [PgDatabase(dsn)]

        def another() -> PgProgress:
            dbs.append(PgDatabase(dsn))
            return PgProgress(dbs[-1])

        try:
            yield PgProgress(dbs[0]), another
        finally:
            for db in dbs:
                db.close()


@pytest.fixture(params=KINDS)
def kit(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Callable[[], Any]]]:
    with opened(request.param) as pair:
        yield pair


def test_a_stream_never_recorded_is_at_zero(kit: Any) -> None:
    store, _ = kit
    assert store.done("alerts", "topic:0") == 0


def test_progress_is_per_follower_and_stream_and_shared_by_every_handle(kit: Any) -> None:
    store, another = kit
    store.advance("alerts", "topic:0", 40)
    other = another()
    assert other.done("alerts", "topic:0") == 40
    assert other.done("alerts", "topic:1") == 0
    assert other.done("counters", "topic:0") == 0
    other.advance("counters", "topic:0", 7)
    assert store.done("counters", "topic:0") == 7


def test_progress_never_moves_back(kit: Any) -> None:
    store, another = kit
    store.advance("alerts", "topic:0", 40)
    another().advance("alerts", "topic:0", 25)  # a worker that handled an older range records it late
    assert store.done("alerts", "topic:0") == 40
    store.advance("alerts", "topic:0", 41)
    assert store.done("alerts", "topic:0") == 41
