"""Pruning the dedupe index: keys past the dedupe window (and its grace period) are deleted; a key
inside the window stays a duplicate, an expired one is new again; deleting a key never changes an
answer, also when the clock steps back, across a restart, or when the pruning commit fails."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest
from conftest import T0_US, build_api

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.dedupe_prune import GRACE_US, DedupePruner
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.domain.clock import FixedClock
from meterline.domain.errors import StorageUnavailable
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery
from meterline.services.aggregation import Aggregator

MINUTE = 60_000_000
HOUR = 60 * MINUTE
LIMITS = Limits(100, 5 * MINUTE, None)


def open_backend(data_dir: Path, clock: FixedClock, window_us: int | None = HOUR) -> EmbeddedBackend:
    b = EmbeddedBackend(data_dir, IngestSettings(window_us, 100), clock, fsync="normal")
    try:
        b.meters.get("default", "n")
    except Exception:
        spec = MeterSpec(slug="n", event_type="t", aggregation=Aggregation.SUM, value_property="$.v")
        b.meters.create("default", spec)
    return b


def send(b: EmbeddedBackend, clock: FixedClock, *ids: str) -> list[str]:
    """Send events (time = receipt time) and return their outcomes."""
    body = msgspec.json.encode(
        [{"specversion": "1.0", "id": i, "source": "s", "type": "t", "subject": "acme", "data": {"v": 1}} for i in ids]
    )
    found = decode_events(split_body(body, "batch", 100), "default", clock.now_us(), LIMITS)
    return [o.status.value for o in b.ledger.append("default", found).result(10)]


def keys(b: EmbeddedBackend) -> set[str]:
    """The ids the dedupe index still holds a key for."""
    seqs, _ = b.dedupe.held()
    marks = ",".join("?" * len(seqs))
    return {r[0] for r in b.db.reader().execute(f"SELECT id FROM events WHERE seq IN ({marks})", seqs)}


def counted(b: EmbeddedBackend, clock: FixedClock) -> object:
    Aggregator(b.ledger, b.usage, cap=100).drain()  # rollups are the aggregator's: bring them up to date
    rows = b.meters.query(b.meters.get("default", "n"), MeterQuery(start=0, end=clock.now_us() // 1_000_000 + 60))
    return sum(int(r.value) for r in rows)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0_US)


@pytest.fixture
def backend(tmp_path: Path, clock: FixedClock) -> Iterator[EmbeddedBackend]:
    b = open_backend(tmp_path, clock)
    yield b
    b.close()


def test_expired_key_is_new_again_and_a_key_inside_the_window_stays_a_duplicate(
    backend: EmbeddedBackend, clock: FixedClock
) -> None:
    assert send(backend, clock, "old") == ["accepted"]
    clock.advance((HOUR + GRACE_US) / 1e6 + 600)  # "old" is past the window and the grace period
    assert send(backend, clock, "fresh") == ["accepted"]
    clock.advance(20 * 60)
    assert backend.dedupe_pruner.prune_once() == 1
    assert keys(backend) == {"fresh"} and backend.dedupe_pruner.pruned == 1
    assert send(backend, clock, "fresh", "old") == ["duplicate", "accepted"]
    assert counted(backend, clock) == 3  # "old" twice: a retry after the window is a new event
    assert keys(backend) == {"fresh", "old"}
    assert backend.dedupe_pruner.prune_once() == 0  # nothing else has expired


def test_a_reused_key_is_not_deleted_with_its_first_event(backend: EmbeddedBackend, clock: FixedClock) -> None:
    assert send(backend, clock, "a") == ["accepted"]
    clock.advance((HOUR + GRACE_US) / 1e6 + 60)
    assert send(backend, clock, "a") == ["accepted"]  # expired: new, and the key now belongs to it
    assert backend.dedupe_pruner.prune_once() == 1  # walks past the first event ...
    assert keys(backend) == {"a"} and backend.dedupe_pruner.pruned == 0  # ... and leaves the key
    assert send(backend, clock, "a") == ["duplicate"]


def test_keys_within_the_grace_period_are_kept(backend: EmbeddedBackend, clock: FixedClock) -> None:
    assert send(backend, clock, "a") == ["accepted"]
    clock.advance((HOUR + GRACE_US) / 1e6 - 60)  # expired, but not yet by the grace period
    assert backend.dedupe_pruner.prune_once() == 0 and keys(backend) == {"a"}
    assert send(backend, clock, "a") == ["accepted"]  # expired all the same


def test_pruning_never_changes_an_answer_when_the_clock_steps_back(tmp_path: Path, clock: FixedClock) -> None:
    b = open_backend(tmp_path, clock)
    assert send(b, clock, "x1", "x2", "x3") == ["accepted"] * 3  # at t0
    clock.advance(40 * 60)
    assert send(b, clock, "y") == ["accepted"]  # at t0 + 40 min
    clock._now = T0_US + 2 * HOUR + 30 * MINUTE  # the floor is now t0 + 30 min
    one_at_a_time = DedupePruner(b.db, b.state, clock.now_us, batch=1)
    assert one_at_a_time.prune_once() == 1 and keys(b) == {"x2", "x3", "y"}

    clock._now = T0_US + 50 * MINUTE  # the clock steps back 100 min
    # By this clock x1 (deleted) and x2 (not yet) are 50 min old, inside the window; but both
    # were received before the floor, so both are expired, alike: deleting x1 changed nothing.
    assert send(b, clock, "x1", "x2") == ["accepted", "accepted"]
    # y, received after the floor, is 10 min old by this clock: a duplicate, as without pruning
    assert send(b, clock, "y") == ["duplicate"]
    b.close()

    b = open_backend(tmp_path, clock)  # the floor survives a restart
    assert send(b, clock, "x3", "y") == ["accepted", "duplicate"]
    b.close()


def test_a_failed_pruning_commit_leaves_the_floor_where_it_was(backend: EmbeddedBackend, clock: FixedClock) -> None:
    assert send(backend, clock, "a") == ["accepted"]
    clock._now = T0_US + 3 * HOUR
    release, started = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    backend.db.writer.submit(hold)
    started.wait(10)
    with ThreadPoolExecutor(1) as pool:
        pruning = pool.submit(backend.dedupe_pruner.prune_once)
        while backend.db.writer._queue.empty():  # the pruning task is queued behind `hold`
            time.sleep(0.001)
        found = decode_events(split_body(b'[{"specversion":"1.0","id":"b","source":"s","type":"t",'
                                         b'"subject":"acme","data":{"v":1}}]', "batch", 100),
                              "default", clock.now_us(), LIMITS)  # fmt: skip
        doomed = backend.ledger.append("default", found)
        original = backend.usage.before_commit

        def boom(conn: sqlite3.Connection) -> None:  # the last step before COMMIT fails, once
            backend.usage.before_commit = original  # type: ignore[method-assign]
            raise sqlite3.OperationalError("boom")

        def break_commit(conn: sqlite3.Connection) -> None:
            backend.usage.before_commit = boom  # type: ignore[method-assign]

        backend.db.writer.submit(break_commit)
        release.set()
        with pytest.raises(StorageUnavailable):
            pruning.result(10)
        with pytest.raises(StorageUnavailable):
            doomed.result(10)
    assert keys(backend) == {"a"} and backend.dedupe_pruner.pruned == 0
    clock._now = T0_US + 30 * MINUTE  # back inside the window: "a" must be a duplicate again
    assert send(backend, clock, "a") == ["duplicate"]


def test_without_a_window_nothing_is_pruned(tmp_path: Path, clock: FixedClock) -> None:
    b = open_backend(tmp_path, clock, window_us=None)
    assert send(b, clock, "a") == ["accepted"]
    clock.advance(3650 * 24 * 3600)
    b.dedupe_pruner.start()
    assert b.dedupe_pruner.prune_once() == 0 and keys(b) == {"a"}
    assert send(b, clock, "a") == ["duplicate"]
    b.close()


def test_the_server_prunes_by_itself(tmp_path: Path) -> None:
    for api in build_api(tmp_path, ingest={"dedupe_window": "PT1H"}):
        api.create_meter(slug="n", eventType="t", aggregation="COUNT")
        event = {"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": "acme"}
        assert api.post_events([event]).status_code == 204
        backend = api.client.app.state.system.backend  # type: ignore[attr-defined]
        assert keys(backend) == {"a"}
        api.clock.advance(3 * 3600)
        deadline = time.monotonic() + 20
        while keys(backend):  # the pruner looks once a second
            assert time.monotonic() < deadline, "the server did not prune the expired key"
            time.sleep(0.05)
        assert backend.dedupe_pruner.pruned == 1
