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


def events_in(namespace: str, ids: list[str], v: int = 1) -> list:  # type: ignore[type-arg]
    body = msgspec.json.encode(
        [{"specversion": "1.0", "id": i, "source": "w", "type": "t", "subject": "acme", "data": {"v": v}} for i in ids]
    )
    return decode_events(split_body(body, "batch", 100), namespace, T0_US, LIMITS)


def test_appends_in_one_transaction_run_together_with_each_requests_own_outcomes(backend: EmbeddedBackend) -> None:
    statements: list[str] = []
    backend.db.writer.call(lambda conn: conn.set_trace_callback(statements.append))
    release = hold_writer(backend)  # the appends below queue up and land in one transaction
    first = backend.ledger.append("default", events_in("default", ["a", "b"]))
    same = backend.ledger.append("default", events_in("default", ["b", "c"]))  # b: as the first sent it
    changed = backend.ledger.append("default", events_in("default", ["c", "d"], v=5))  # c: another payload
    elsewhere = backend.ledger.append("other", events_in("other", ["a"]))  # another namespace: its own key
    release.set()

    def report(future: object) -> list[tuple[str, bool]]:
        return [(o.status.value, o.conflict) for o in future.result(10)]  # type: ignore[attr-defined]

    assert report(first) == [("accepted", False), ("accepted", False)]
    assert report(same) == [("duplicate", False), ("accepted", False)]
    assert report(changed) == [("duplicate", True), ("accepted", False)]
    assert report(elsewhere) == [("accepted", False)]
    # each request's position covers its own events and those before it
    assert [f.result(10).position for f in (first, same, changed, elsewhere)] == [2, 3, 4, 5]  # type: ignore[attr-defined]
    backend.db.writer.call(lambda conn: conn.set_trace_callback(None))
    assert statements.count("SAVEPOINT tasks") == 1  # one run of the four ...
    at = statements.index("SAVEPOINT tasks")
    begin = at - statements[at::-1].index("BEGIN IMMEDIATE")
    transaction = statements[begin : statements.index("COMMIT", at) + 1]
    assert "SAVEPOINT task" not in transaction  # ... and no savepoint per request
    assert total(backend) == [1 + 1 + 1 + 5]  # a, b, c and d of the default namespace, each once


@pytest.mark.parametrize("error", [InvalidInput("no"), RuntimeError("a bug")])
def test_a_run_that_fails_is_undone_and_its_tasks_run_alone(backend: EmbeddedBackend, error: Exception) -> None:
    writer = backend.db.writer
    runs: list[int] = []

    def together(conn: sqlite3.Connection, work: list) -> list:  # type: ignore[type-arg]
        runs.append(len(work))
        return [w(conn) for w in work]

    def insert(name: str) -> object:
        def work(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO meta VALUES (?, 'x')", (name,))
            if name.startswith("bad"):
                raise error
            return name

        return work

    release = hold_writer(backend)
    futures = [writer.submit(insert(n), together=together) for n in ("t1", "bad", "t2")]  # type: ignore[arg-type]
    plain = writer.submit(insert("t3"))  # type: ignore[arg-type]
    later = [writer.submit(insert(n), together=together) for n in ("t4", "t5")]  # type: ignore[arg-type]
    release.set()
    assert [futures[0].result(10), futures[2].result(10), plain.result(10)] == ["t1", "t2", "t3"]
    assert [f.result(10) for f in later] == ["t4", "t5"]
    with pytest.raises(StorageUnavailable if isinstance(error, RuntimeError) else InvalidInput):
        futures[1].result(10)
    assert runs == [3, 2]  # t1-t2 together once (then alone), t3 alone, t4-t5 together
    stored = {row[0] for row in backend.db.reader().execute("SELECT key FROM meta WHERE value = 'x'")}
    assert stored == {"t1", "t2", "t3", "t4", "t5"}
