"""Sink workers on the local stack: events written through the Kafka ledger (a 2xx only after
every delivery report) are counted exactly once in ClickHouse, also when a worker is killed
with SIGKILL mid-load and its partitions are taken over by another worker, and when the killed
one comes back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from contract.events import LIMITS
from postgres_server import fresh_schema
from stack.launch import Stack

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.reads import ClickHouseProgress
from meterline.adapters.clickhouse.usage import ClickHouseUsage
from meterline.adapters.kafka.ledger import KafkaLedger, ensure_topic
from meterline.adapters.memory.dedupe import MemoryDedupe
from meterline.adapters.memory.meters import MemoryMeters
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.meters import PgMeters
from meterline.bootstrap import ensure_scale_meters, scale_dedupe
from meterline.config import load_config
from meterline.domain.clock import FixedClock
from meterline.domain.errors import StorageUnavailable
from meterline.domain.events.decode import decode_events, split_body
from meterline.domain.events.model import Status
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery
from meterline.ports.dedupe import EventKey, Verdict

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

NS = "default"
T0 = 1_772_366_400  # 2026-03-01T12:00:00Z
PARTITIONS = 4


@pytest.fixture
def scale_config(scale_stack: Stack, tmp_path: Path) -> Iterator[Path]:
    """A config of the stack with a topic, a ClickHouse database and a PostgreSQL schema of this
    test's own."""
    name = f"t{uuid.uuid4().hex[:12]}"
    path = tmp_path / "scale.toml"
    with fresh_schema(scale_stack.postgres) as dsn:
        yield from _config(scale_stack, name, path, dsn)


def _config(scale_stack: Stack, name: str, path: Path, dsn: str) -> Iterator[Path]:
    path.write_text(
        scale_stack.config_toml()
        .replace(f'dsn = "{scale_stack.postgres}"', f'dsn = "{dsn}"')
        .replace('topic = "meterline-events"', f'topic = "{name}"\nconsumer_group = "{name}"')  # groups unshared
        .replace("partitions = 4", f"partitions = {PARTITIONS}")
        .replace('database = "meterline"', f'database = "{name}"')
        + '\n[aggregation]\nchunk = 300\n[ingest]\nlate_arrival_window = "P3650D"\n'
        + '\n[[meters]]\nslug = "tokens"\nevent_type = "prompt"\naggregation = "SUM"\nvalue_property = "$.tokens"\n'
        + '\n[[meters]]\nslug = "prompts"\nevent_type = "prompt"\naggregation = "COUNT"\n'
    )
    yield path
    config = load_config(path)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    conn.command(f"DROP DATABASE IF EXISTS `{config.clickhouse.database}`")
    conn.close()


def start_worker(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "meterline.cli.main", "worker", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "METERLINE_LOG__FORMAT": "text"},
        )


def body(first: int, n: int) -> bytes:
    events = [
        {"specversion": "1.0", "id": f"e{i}", "source": "load", "type": "prompt", "subject": f"c{i % 13}",
         "time": f"2026-02-{1 + i % 28:02d}T10:00:00.{i % 1000:03d}Z", "data": {"tokens": f"{i}.{i % 7}"}}
        for i in range(first, first + n)
    ]  # fmt: skip
    return msgspec.json.encode(events)


def applied(usage: ClickHouseUsage, meters: PgMeters) -> int:
    rows = usage.query(meters.get(NS, "prompts"), MeterQuery(start=0, end=T0))
    return int(sum((r.value for r in rows), Decimal(0)))


def wait_for(check: object, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_acknowledged_event_is_counted_once_across_a_worker_killed_mid_load(
    scale_config: Path, tmp_path: Path
) -> None:
    config = load_config(scale_config)
    k = config.kafka
    ensure_topic(k.bootstrap_servers, k.topic, k.partitions, 1)
    pg = PgDatabase(config.postgres.dsn)
    meters = PgMeters(pg, lambda: T0 * 1_000_000)
    ensure_scale_meters(config, meters)
    dedupe = scale_dedupe(config, pg, FixedClock(T0 * 1_000_000))
    ledger = KafkaLedger(k.bootstrap_servers, k.topic, meters, dedupe, lambda: T0 * 1_000_000, cap=1000)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    usage = ClickHouseUsage(conn, meters.live, lambda: T0 * 1_000_000)
    logs = tmp_path / "workers.log"
    workers = [start_worker(scale_config, logs), start_worker(scale_config, logs)]
    total, batch = 0, 500
    killed: list[subprocess.Popen[bytes]] = []
    try:
        for round_ in range(12):
            candidates = decode_events(split_body(body(total, batch), "batch", 10_000), NS, T0 * 1_000_000, LIMITS)
            outcomes = ledger.append(NS, candidates).result(60)
            assert [o.status for o in outcomes] == [Status.ACCEPTED] * batch
            total += batch
            if round_ in (3, 7):  # mid-load, once something was applied: SIGKILL one worker
                wait_for(lambda: applied(usage, meters) > 0, "the first batches")
                victim = workers[0 if round_ == 3 else 1]
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed.append(victim)
            if round_ in (5, 9):  # and start it again
                workers[0 if round_ == 5 else 1] = start_worker(scale_config, logs)
        retried = decode_events(split_body(body(1000, batch), "batch", 10_000), NS, T0 * 1_000_000, LIMITS)
        outcomes = ledger.append(NS, retried).result(60)  # a client's retry of an acknowledged request
        assert [o.status for o in outcomes] == [Status.DUPLICATE] * batch
        wait_for(lambda: applied(usage, meters) >= total, f"{total} events in ClickHouse", timeout=240)
        assert applied(usage, meters) == total
        rows = usage.query(meters.get(NS, "tokens"), MeterQuery(start=0, end=T0))
        want = sum((Decimal(f"{i}.{i % 7}") for i in range(total)), Decimal(0))
        assert sum((r.value for r in rows), Decimal(0)) == want
        assert conn.rows("SELECT count(), uniqExact(source, id) FROM events")[0] == (total, total)
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(timeout=30)
        ledger.close()
        conn.close()
        pg.close()
    assert [w.returncode for w in killed] == [-signal.SIGKILL] * 2
    assert [w.returncode for w in workers] == [0, 0], logs.read_text()[-3000:]


def test_an_append_no_broker_acknowledged_fails_instead_of_answering(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    meters = MemoryMeters(lambda: T0 * 1_000_000)
    dedupe = MemoryDedupe(lambda: T0 * 1_000_000, lease_us=60_000_000)
    now = lambda: T0 * 1_000_000  # noqa: E731
    ledger = KafkaLedger(f"127.0.0.1:{port}", "nowhere", meters, dedupe, now, cap=10, delivery_timeout=1)
    candidates = decode_events(split_body(body(0, 3), "batch", 10_000), NS, T0 * 1_000_000, LIMITS)
    try:
        with pytest.raises(StorageUnavailable):
            ledger.append(NS, candidates).result(30)
    finally:
        ledger.close()
    keys = [EventKey(NS, "load", f"e{i}", c.event.digest) for i, c in enumerate(candidates) if c.event]
    assert dedupe.claim(keys).verdicts == [Verdict.CLAIMED] * 3  # released: a retry is not held up


def test_a_meter_created_later_counts_earlier_events_once_across_a_killed_worker(
    scale_config: Path, tmp_path: Path
) -> None:
    """A meter created when every partition already holds events: the workers fold those from
    the raw table (idle partitions too), exactly once although a worker is killed mid-way, and
    the events after its creation count once as well; partial minutes agree with the rollups."""
    config = load_config(scale_config)
    k = config.kafka
    ensure_topic(k.bootstrap_servers, k.topic, k.partitions, 1)
    pg = PgDatabase(config.postgres.dsn)
    meters = PgMeters(pg, lambda: T0 * 1_000_000)
    ensure_scale_meters(config, meters)
    dedupe = scale_dedupe(config, pg, FixedClock(T0 * 1_000_000))
    ledger = KafkaLedger(k.bootstrap_servers, k.topic, meters, dedupe, lambda: T0 * 1_000_000, cap=1000)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    usage = ClickHouseUsage(conn, meters.live, lambda: T0 * 1_000_000)
    progress = ClickHouseProgress(conn, k.topic)
    logs = tmp_path / "workers.log"
    worker = start_worker(scale_config, logs)
    total = 3000

    def append(first: int, n: int) -> None:
        candidates = decode_events(split_body(body(first, n), "batch", 10_000), NS, T0 * 1_000_000, LIMITS)
        assert {o.status for o in ledger.append(NS, candidates).result(60)} == {Status.ACCEPTED}

    try:
        append(0, total)
        wait_for(lambda: applied(usage, meters) == total, f"{total} events in ClickHouse", timeout=600)
        slug = "later"
        spec = MeterSpec(slug, "prompt", Aggregation.SUM, value_property="$.tokens")
        later = meters.create(NS, spec)
        started = "SELECT count() FROM usage_progress WHERE startsWith(stream, {p:String})"
        wait_for(lambda: conn.rows(started, {"p": f"backfill:{later.key}:"})[0][0] > 0, "the backfill", timeout=300)
        worker.send_signal(signal.SIGKILL)  # wherever it is in the backfill
        worker.wait()
        append(total, 600)  # after the meter's creation: counted live, not by the backfill
        total += 600
        worker = start_worker(scale_config, logs)
        done = lambda: not progress.backfilling() and applied(usage, meters) == total  # noqa: E731
        wait_for(done, "the backfill to finish", timeout=600)
        want = sum((Decimal(f"{i}.{i % 7}") for i in range(total)), Decimal(0))
        feb10 = T0 - 19 * 86_400 - 7200  # 2026-02-10T10:00:00Z: events at 10:00:00.000-.999
        whole, partial = MeterQuery(start=0, end=T0), MeterQuery(start=feb10, end=T0, start_us=feb10 * 10**6 + 500_000)
        for query in (whole, partial):
            sums = [sum((r.value for r in usage.query(meters.get(NS, m), query)), Decimal(0)) for m in ("tokens", slug)]
            assert sums[0] == sums[1]
        assert sums[1] < want
        assert sum((r.value for r in usage.query(later, whole)), Decimal(0)) == want
        by_subject = MeterQuery(start=0, end=T0, group_by=("subject",))
        tokens = meters.get(NS, "tokens")
        rows = [sorted((r.subject, r.value) for r in usage.query(m, by_subject)) for m in (tokens, later)]
        assert rows[0] == rows[1] and len(rows[1]) == 13
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
        ledger.close()
        conn.close()
        pg.close()
