"""The writer's group commit: tasks share a transaction, a failing task rolls back alone, a
failing commit fails every task of it, and pending rollup deltas follow those rules."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import msgspec
import pytest
from conftest import T0_US

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.bootstrap import attach_aggregator
from meterline.domain.clock import FixedClock
from meterline.domain.errors import InvalidInput, StorageUnavailable
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery

LIMITS = Limits(100, 300_000_000, None)


def candidates(ids: list[str]) -> list:  # type: ignore[type-arg]
    body = msgspec.json.encode(
        [{"specversion": "1.0", "id": i, "source": "w", "type": "t", "subject": "acme", "data": {"v": 1}} for i in ids]
    )
    return decode_events(split_body(body, "batch", 100), "default", T0_US, LIMITS)


@pytest.fixture
def backend(tmp_path: Path):  # type: ignore[no-untyped-def]
    b = EmbeddedBackend(tmp_path, IngestSettings(None, 100), FixedClock(T0_US), fsync="normal")
    aggregator = attach_aggregator(b, cap=100)
    aggregator.start()
    b.meters.create("default", MeterSpec(slug="n", event_type="t", aggregation=Aggregation.SUM, value_property="$.v"))
    yield b
    aggregator.close()
    b.close()


def total(b: EmbeddedBackend) -> object:
    rows = b.meters.query(b.meters.get("default", "n"), MeterQuery(start=0, end=T0_US // 1_000_000 + 60))
    return [r.value for r in rows]


def hold_writer(b: EmbeddedBackend) -> threading.Event:
    release, started = threading.Event(), threading.Event()

    def block(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    b.db.writer.submit(block)
    started.wait(10)
    return release


def test_failed_task_rolls_back_alone(backend: EmbeddedBackend) -> None:
    release = hold_writer(backend)  # everything below queues up and lands in one transaction
    first = backend.ledger.append("default", candidates(["a", "b"]))

    def fail(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO dead_letters (namespace, received_us, reason, message, raw) VALUES ('x',0,'r','m','')"
        )
        raise InvalidInput("no")

    failing = backend.db.writer.submit(fail)
    third = backend.ledger.append("default", candidates(["c"]))
    release.set()
    assert [o.status.value for o in first.result(10)] == ["accepted", "accepted"]
    with pytest.raises(InvalidInput):
        failing.result(10)
    assert [o.status.value for o in third.result(10)] == ["accepted"]
    assert total(backend) == [3]
    assert backend.dead_letters.count() == 0


def test_failed_commit_fails_every_task_and_loses_nothing_acknowledged(backend: EmbeddedBackend) -> None:
    assert [o.status.value for o in backend.ledger.append("default", candidates(["a"])).result(10)] == ["accepted"]
    release = hold_writer(backend)
    doomed = backend.ledger.append("default", candidates(["b"]))

    original = backend.usage.before_commit

    def boom(conn: sqlite3.Connection) -> None:  # the last step before COMMIT fails, once
        backend.usage.before_commit = original  # type: ignore[method-assign]
        raise sqlite3.OperationalError("boom")

    def break_commit(conn: sqlite3.Connection) -> None:
        backend.usage.before_commit = boom  # type: ignore[method-assign]

    backend.db.writer.submit(break_commit)
    release.set()
    with pytest.raises(StorageUnavailable):
        doomed.result(10)
    # the failed transaction left nothing behind; the retry is accepted and counted once
    assert [o.status.value for o in backend.ledger.append("default", candidates(["b"])).result(10)] == ["accepted"]
    assert total(backend) == [2]


def test_a_transaction_holds_at_most_max_weight_events_and_never_splits_a_task(tmp_path: Path) -> None:
    b = EmbeddedBackend(tmp_path, IngestSettings(None, 100), FixedClock(T0_US), fsync="normal", max_weight=5000)
    try:
        writer = b.db.writer
        release = hold_writer(b)
        seen: list[tuple[str, int]] = []

        def task(name: str) -> object:
            return lambda conn: seen.append((name, writer.commits))

        futures = [writer.submit(task(n), weight=w) for n, w in (("a", 3000), ("b", 3000), ("c", 1000), ("d", 9000))]
        release.set()
        for f in futures:
            f.result(10)
        first = seen[0][1]
        assert seen == [("a", first), ("b", first + 1), ("c", first + 1), ("d", first + 2)]
    finally:
        b.close()
