"""The aggregator on real SQLite files: every ledger entry applied exactly once, the offset
moving only together with what it wrote, backfill as the same mechanism, read-your-writes."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import pytest
from conftest import T0_US

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.adapters.sqlite.rebuild import rebuild
from meterline.adapters.sqlite.replay import stored_offset
from meterline.adapters.sqlite.schema import connect
from meterline.bootstrap import aggregator as configured_aggregator
from meterline.bootstrap import attach_aggregator
from meterline.config import load_config
from meterline.domain.clock import FixedClock
from meterline.domain.errors import StorageUnavailable
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery
from meterline.ports.stream import Committed, Firing, UsageQueries
from meterline.services.aggregation import Aggregator

LIMITS = Limits(10_000, 300_000_000, None)
SUM = MeterSpec(slug="s", event_type="t", aggregation=Aggregation.SUM, value_property="$.v")
COUNT = MeterSpec(slug="c", event_type="t", aggregation=Aggregation.COUNT)


def open_backend(path: Path) -> EmbeddedBackend:
    return EmbeddedBackend(path, IngestSettings(None, 100), FixedClock(T0_US), fsync="normal")


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[EmbeddedBackend]:
    b = open_backend(tmp_path)
    b.meters.create("default", SUM)
    yield b
    b.close()


def send(b: EmbeddedBackend, first: int, n: int) -> None:
    """Events ``first .. first+n-1`` with value = id, spread over five subjects and a day."""
    events = [
        {
            "specversion": "1.0",
            "id": str(i),
            "source": "a",
            "type": "t",
            "subject": f"c{i % 5}",
            "time": "2026-03-01T00:00:00Z" if i % 2 else "2026-02-28T23:59:59.5Z",  # late ones too
            "data": {"v": i},
        }
        for i in range(first, first + n)
    ]
    found = decode_events(split_body(msgspec.json.encode(events), "batch", 10_000), "default", T0_US, LIMITS)
    outcomes = b.ledger.append("default", found).result(10)
    assert all(o.status.value == "accepted" for o in outcomes)


def total(b: EmbeddedBackend, slug: str = "s") -> int:
    rows = b.meters.query(b.meters.get("default", slug), MeterQuery(start=0, end=T0_US // 1_000_000 + 60))
    return sum(int(r.value) for r in rows)


def offset(b: EmbeddedBackend) -> int:
    return stored_offset(b.db.reader())


def rebuild_identical(path: Path) -> bool:
    conn = connect(path / "meterline.db")
    try:
        conn.execute("BEGIN IMMEDIATE")
        report = rebuild(conn, cap=100, replace=False)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return report.identical


class Boom:
    """A committed-usage listener that fails where it is told to, once."""

    def __init__(self, where: str) -> None:
        self.where = where

    def add_many(self, readings: Sequence[Committed]) -> None:
        self._maybe("add_many")

    def prepare(self, usage: UsageQueries) -> list[Firing]:
        self._maybe("prepare")
        return []

    def after_commit(self) -> None: ...

    def rolled_back(self) -> None: ...

    def _maybe(self, where: str) -> None:
        if self.where == where:
            self.where = ""
            raise sqlite3.OperationalError("boom")


@pytest.mark.parametrize("where", ["add_many", "prepare"])
def test_a_failed_batch_leaves_rollups_and_offset_unchanged(backend: EmbeddedBackend, where: str) -> None:
    send(backend, 1, 100)
    backend.state.listeners.append(Boom(where))  # fails inside the batch's task, or at its COMMIT
    aggregator = Aggregator(backend.ledger, backend.usage, cap=100)
    with pytest.raises(StorageUnavailable):
        aggregator.drain()
    assert offset(backend) == 0 and total(backend) == 0
    aggregator.drain()  # the retry applies every entry once
    assert offset(backend) == 100 and total(backend) == sum(range(1, 101))


def test_a_batch_computed_for_other_meters_is_refused_and_computed_again(backend: EmbeddedBackend) -> None:
    send(backend, 1, 50)
    aggregator = Aggregator(backend.ledger, backend.usage, cap=100)
    real_apply = backend.usage.apply

    def apply_after_a_new_meter(batch):  # type: ignore[no-untyped-def]
        backend.usage.apply = real_apply  # type: ignore[method-assign]
        backend.meters.create("default", COUNT)  # lands between computing and applying the batch
        return real_apply(batch)

    backend.usage.apply = apply_after_a_new_meter  # type: ignore[method-assign]
    aggregator.drain()
    assert aggregator.stats.refused == 1
    assert total(backend) == sum(range(1, 51)) and total(backend, "c") == 50


def test_chunks_resume_from_the_stored_offset_after_a_restart(tmp_path: Path) -> None:
    b = open_backend(tmp_path)
    b.meters.create("default", SUM)
    send(b, 1, 250)
    aggregator = Aggregator(b.ledger, b.usage, cap=100, chunk=100)
    aggregator._step()  # one chunk of 100, then the process "stops"
    assert offset(b) == 100 and total(b) == sum(range(1, 101))
    b.close()
    b = open_backend(tmp_path)
    try:
        Aggregator(b.ledger, b.usage, cap=100, chunk=100).drain()
        assert offset(b) == 250 and total(b) == sum(range(1, 251))
    finally:
        b.close()
    assert rebuild_identical(tmp_path)


def test_a_new_meter_backfills_from_offset_zero_while_live_events_flow(tmp_path: Path) -> None:
    b = open_backend(tmp_path)
    try:
        b.meters.create("default", SUM)
        send(b, 1, 300)
        aggregator = Aggregator(b.ledger, b.usage, cap=100, chunk=64)
        aggregator.drain()
        b.meters.create("default", COUNT)  # 300 events before it: its backfill offset starts at 0
        aggregator.meters_changed()
        send(b, 301, 10)
        aggregator.drain()
        assert total(b, "c") == 310 and total(b) == sum(range(1, 311))
        assert b.meters.pending_backfill() == 0
    finally:
        b.close()
    assert rebuild_identical(tmp_path)


def test_rebuild_check_catches_up_a_lagging_aggregation_first(backend: EmbeddedBackend, tmp_path: Path) -> None:
    send(backend, 1, 40)  # never aggregated
    assert rebuild_identical(tmp_path)


def test_reads_wait_for_the_position_of_their_writes(backend: EmbeddedBackend) -> None:
    aggregator = attach_aggregator(backend, cap=100, max_wait=30)
    aggregator.start()
    try:
        for n in range(5):
            send(backend, 1 + 10 * n, 10)
            assert total(backend) == sum(range(1, 11 + 10 * n))  # no sleep: the read waits
        assert aggregator.position == backend.ledger.position() == 50
        assert aggregator.lag() == 0
    finally:
        aggregator.close()


def test_a_stream_of_small_commits_is_aggregated_once_per_gathering_not_once_per_commit(
    backend: EmbeddedBackend,
) -> None:
    gather = 0.02
    aggregator = Aggregator(backend.ledger, backend.usage, cap=100, gather=gather)
    backend.state.on_head.append(aggregator.wake)
    aggregator.start()
    try:
        started = time.monotonic()
        for i in range(1, 301):
            send(backend, i, 1)  # 300 commits, one after another
        elapsed = time.monotonic() - started
        assert aggregator.wait_for(backend.ledger.position(), 30)
        # A step that reached the head is followed by a wait for a wake-up and then ``gather``
        # seconds, so the steps that applied something are bounded by the time the stream took
        # (plus the first step, an idle poll each second, and the read's urgent step); stepping
        # again at once after each step took one batch per commit or two.
        assert aggregator.stats.batches <= 3 + elapsed / gather + elapsed
        assert total(backend) == sum(range(1, 301))
    finally:
        aggregator.close()


def test_the_configured_gather_sets_how_long_commits_accumulate(backend: EmbeddedBackend, tmp_path: Path) -> None:
    config = load_config(None, {"storage": {"data_dir": tmp_path / "unused"}, "aggregation": {"gather": 1.0}})
    aggregator = configured_aggregator(config, backend)
    aggregator.start()
    try:
        started, sent = time.monotonic(), 0
        while time.monotonic() - started < 0.5:  # commits one after another for half a second
            sent += 1
            send(backend, sent, 1)
        elapsed = time.monotonic() - started
        assert total(backend) == sum(range(1, sent + 1))  # a read waits for its writes: wakes it at once
        # At most one gathering per second of the stream, plus the first step, the read's
        # urgent step and an idle poll per second; the default 0.05 s takes one per 50 ms.
        assert aggregator.stats.batches <= 2 + 2 * elapsed
    finally:
        aggregator.close()


def test_a_stopped_aggregator_bounds_the_wait(backend: EmbeddedBackend) -> None:
    send(backend, 1, 5)
    aggregator = Aggregator(backend.ledger, backend.usage, cap=100)
    assert not aggregator.wait_for(backend.ledger.position(), 0.05)
    aggregator.drain()
    assert aggregator.wait_for(5, 0.0)
