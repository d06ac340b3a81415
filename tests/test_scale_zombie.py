"""A zombie sink worker: stopped with SIGSTOP in the middle of a batch (as a GC pause, a frozen
VM or a network partition would stop it) for longer than its Kafka session, so its partition
is taken over by another worker, which goes on past it; then resumed with SIGCONT. Whatever
the paused worker then writes, every event is counted exactly once and ``usage_progress``
never goes back (docs/scale.md, "Zombie workers")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from contract.events import LIMITS
from scale_site import TOKEN_METERS, Site, site
from stack.launch import Stack

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.kafka.ledger import KafkaLedger, ensure_topic
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.meters import PgMeters
from meterline.bootstrap import ensure_scale_meters, scale_dedupe
from meterline.domain.clock import FixedClock
from meterline.domain.events.decode import decode_events, split_body
from meterline.domain.events.model import Status

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

NS = "default"
T0 = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z
BATCH = 30
EXTRA = (
    """
[aggregation]
chunk = 1000
[ingest]
late_arrival_window = "P3650D"
"""
    + TOKEN_METERS
)
PAUSED_WORKER = Path(__file__).parent / "paused_worker.py"


@pytest.fixture
def one_partition(scale_stack: Stack, tmp_path: Path) -> Iterator[Site]:
    with site(scale_stack, tmp_path / "site", partitions=1, extra=EXTRA) as s:
        yield s


class Producer:
    """Appends events through the Kafka ledger (the API nodes' path: claimed, written, confirmed)."""

    def __init__(self, s: Site) -> None:
        config = s.config
        k = config.kafka
        ensure_topic(k.bootstrap_servers, k.topic, k.partitions, 1)
        self.pg = PgDatabase(config.postgres.dsn)
        meters = PgMeters(self.pg, lambda: T0)
        ensure_scale_meters(config, meters)
        dedupe = scale_dedupe(config, self.pg, FixedClock(T0))
        self.ledger = KafkaLedger(k.bootstrap_servers, k.topic, meters, dedupe, lambda: T0, cap=1000)
        self.sent = 0

    def append(self, n: int) -> None:
        events = [
            {"specversion": "1.0", "id": f"e{i}", "source": "load", "type": "prompt", "subject": f"c{i % 5}",
             "time": f"2026-02-{1 + i % 28:02d}T10:00:00Z",
             "data": {"tokens": f"{i}.{i % 7}", "model": f"m{i % 3}", "user": f"u{i % 11}"}}
            for i in range(self.sent, self.sent + n)
        ]  # fmt: skip
        candidates = decode_events(split_body(msgspec.json.encode(events), "batch", 10_000), NS, T0, LIMITS)
        assert [o.status for o in self.ledger.append(NS, candidates).result(60)] == [Status.ACCEPTED] * n
        self.sent += n

    def close(self) -> None:
        self.ledger.close()
        self.pg.close()


def wait_until(check: object, what: str, s: Site, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {s.log_tail('workers.log')}")


def stopped(pid: int) -> bool:
    """The process is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


@pytest.mark.parametrize("point", ["before-intent", "before-insert"])
def test_a_worker_paused_past_its_session_and_resumed_counts_nothing_twice(
    one_partition: Site, tmp_path: Path, point: str
) -> None:
    """``before-intent``: the paused worker had read the position and folded its batch; the new
    holder applies a longer range from the same start. Without a fence the resumed worker would
    record its shorter range over it and insert it under tokens nobody used (counted twice, and
    the position set back). With it, its write is refused before any insert.
    ``before-insert``: it had recorded its range and passed the fence check; the new holder sees
    the recorded range and redoes exactly it under the same tokens, so the resumed worker's
    inserts are dropped and its position row is hidden by the newer epoch's."""
    s = one_partition
    config = s.config
    stream = f"{config.kafka.topic}:0"
    marks = tmp_path / "marks"
    marks.mkdir()
    producer = Producer(s)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)

    def done() -> int:
        rows = conn.rows("SELECT done FROM usage_progress FINAL WHERE stream = {s:String}", {"s": stream})
        return int(rows[0][0]) if rows else 0

    def counted() -> tuple[int, Decimal]:
        rows = conn.rows(
            "SELECT meter, level, sum(count), sum(total) FROM usage_rollups WHERE level = 3600 GROUP BY meter, level"
        )
        by_total = sorted((r[3], r[2]) for r in rows)  # COUNT's total is 0, so it sorts first
        return (int(by_total[0][1]), Decimal(by_total[1][0])) if len(by_total) == 2 else (0, Decimal(0))

    log = s.dir / "workers.log"
    with log.open("ab") as out:
        zombie = subprocess.Popen(
            [sys.executable, str(PAUSED_WORKER), str(s.config_path), point, str(marks)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "METERLINE_LOG__FORMAT": "text"},
        )
    s.processes.append(zombie)
    try:
        producer.append(BATCH)  # the zombie's batch: it stops itself in the middle of it
        wait_until(lambda: (marks / "paused").exists() and stopped(zombie.pid), "the worker to stop mid-batch", s)
        other = s.worker()
        producer.append(BATCH)  # the other worker takes the partition over and applies past it
        wait_until(lambda: done() == 2 * BATCH, "the other worker to apply both batches", s)
        assert counted()[0] == 2 * BATCH
        zombie.send_signal(signal.SIGCONT)
        wait_until(lambda: (marks / "result").exists(), "the resumed worker's write to return", s)
        result = (marks / "result").read_text()
        assert result == ("False" if point == "before-intent" else "True")  # refused by the fence / deduplicated
        assert done() == 2 * BATCH  # not set back
        producer.append(BATCH)  # and whoever holds the partition now goes on from there
        wait_until(lambda: done() == 3 * BATCH, "the last batch", s)
        total = 3 * BATCH
        want = sum((Decimal(f"{i}.{i % 7}") for i in range(total)), Decimal(0))
        assert counted() == (total, want)
        assert conn.rows("SELECT count(), uniqExact(source, id) FROM events")[0] == (total, total)
        s.stop()
        assert [zombie.returncode, other.returncode] == [0, 0], s.log_tail("workers.log")
    finally:
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
        producer.close()
        conn.close()
