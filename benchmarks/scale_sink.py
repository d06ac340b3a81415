"""Scale mode on the local stack: the ack path into Kafka, the sink workers into ClickHouse,
the lag from ack to queryable, and the month-total query.

    ./run bench scale_sink [--events 200000] [--batch 500] [--senders 4]

Starts its own stack (Tansu, the chdb-backed ClickHouse endpoint, PostgreSQL, Redis; see
docs/scale.md) on free 127.0.0.1 ports and stops it at the end. Then:

1. **ack path**: 1 process, then 2 processes (standing in for API nodes), each with
   ``--senders`` threads appending ``--batch``-event requests through the Kafka ledger (claim in
   PostgreSQL, write with ``acks=all``, confirm) until ``--events`` are acknowledged in all;
2. **sink**: 1, then 2 ``meterline worker`` processes (each pair in a fresh ClickHouse database
   and consumer group) consume the whole topic (4 partitions); events/s from start to the last
   event counted;
3. **lag**: with 2 workers running, 20 single requests of 100 events: time from the ack to the
   moment a meter query counts them (polled every 10 ms);
4. **month total**: a SUM meter's total for the month holding every event, 50 times (p50, p95).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import percentile  # noqa: E402
from stack import launch  # noqa: E402

from meterline.adapters.clickhouse.client import Connection  # noqa: E402
from meterline.adapters.clickhouse.schema import create  # noqa: E402
from meterline.adapters.clickhouse.usage import ClickHouseUsage  # noqa: E402
from meterline.adapters.kafka.ledger import KafkaLedger, ensure_topic  # noqa: E402
from meterline.adapters.postgres.database import PgDatabase  # noqa: E402
from meterline.adapters.postgres.meters import PgMeters  # noqa: E402
from meterline.bootstrap import ensure_scale_meters, scale_dedupe  # noqa: E402
from meterline.config import Config, load_config  # noqa: E402
from meterline.domain.clock import SystemClock  # noqa: E402
from meterline.domain.events.decode import Limits, decode_events, split_body  # noqa: E402
from meterline.domain.meters.query import MeterQuery  # noqa: E402

NS = "default"
LIMITS = Limits(10_000, 300_000_000, None)
MONTH = (1_769_904_000, 1_772_323_200)  # February 2026, UTC
METERS = """
[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
group_by = { model = "$.model" }
"""


def body(first: int, n: int, tag: str) -> bytes:
    events = [
        {"specversion": "1.0", "id": f"{tag}-{i}", "source": "bench", "type": "prompt", "subject": f"c{i % 500}",
         "time": f"2026-02-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
         "data": {"tokens": f"{i % 1000}.{i % 7}", "model": f"m{i % 5}"}}
        for i in range(first, first + n)
    ]  # fmt: skip
    return msgspec.json.encode(events)


class Ledger:
    """A Kafka ledger as an API node holds it."""

    def __init__(self, config: Config) -> None:
        self.pg = PgDatabase(config.postgres.dsn)
        self.meters = PgMeters(self.pg, SystemClock().now_us)
        ensure_scale_meters(config, self.meters)
        k = config.kafka
        dedupe = scale_dedupe(config, self.pg, SystemClock())
        self.ledger = KafkaLedger(k.bootstrap_servers, k.topic, self.meters, dedupe, SystemClock().now_us, cap=1000)

    def send(self, first: int, n: int, tag: str) -> None:
        candidates = decode_events(split_body(body(first, n, tag), "batch", 10_000), NS, SystemClock().now_us(), LIMITS)
        self.ledger.append(NS, candidates).result(120)

    def close(self) -> None:
        self.ledger.close()
        self.pg.close()


def produce(config_path: Path, first: int, n: int, batch: int, senders: int) -> None:
    """One sending process: ``senders`` threads append requests of ``batch`` events."""
    ledger = Ledger(load_config(config_path))
    with ThreadPoolExecutor(senders) as pool:
        list(pool.map(lambda f: ledger.send(f, min(batch, first + n - f), "load"), range(first, first + n, batch)))
    ledger.close()


def ack_path(config_path: Path, events: int, batch: int, senders: int, processes: int, offset: int) -> float:
    share = events // processes
    started = time.perf_counter()
    produce_argv = [sys.executable, __file__, "--produce", str(config_path)]
    procs = [
        subprocess.Popen([*produce_argv, str(offset + i * share), str(share), str(batch), str(senders)])
        for i in range(processes)
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("a sending process failed")
    return share * processes / (time.perf_counter() - started)


def with_database(stack: launch.Stack, root: Path, name: str, topic: str, pg_dsn: str) -> Path:
    path = root / f"{name}.toml"
    text = stack.config_toml().replace('database = "meterline"', f'database = "{name}"')
    text = text.replace('topic = "meterline-events"', f'topic = "{topic}"').replace(stack.postgres, pg_dsn)
    text = text.replace("[clickhouse]", f'consumer_group = "{name}"\n\n[clickhouse]')
    path.write_text(text + '\n[ingest]\nlate_arrival_window = "P3650D"\n' + METERS)
    return path


def seeded_site(stack: launch.Stack, root: Path, name: str, events: int) -> Path:
    """A config of ``name`` on ``stack`` (its own ClickHouse database, topic and consumer group),
    its ClickHouse tables created and ``events`` appended through the ack path (500-event
    requests, 4 senders); the config's path."""
    path = with_database(stack, root, name, f"bench{uuid.uuid4().hex[:8]}", stack.postgres)
    config = load_config(path)
    create(Connection(config.clickhouse.url, config.clickhouse.database), config.clickhouse.dedupe_window, None)
    rate = ack_path(path, events, 500, 4, 1, 0)
    print(f"appended {events:,} events ({rate:,.0f} events/s)")
    return path


def _wait_count(conn: Connection, want: int, poll: float, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while _count(conn) < want:
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {want} counted events (have {_count(conn)})")
        time.sleep(poll)


def _count(conn: Connection) -> int:
    """Events counted so far (every event adds 1 to one hour bucket of the meter)."""
    rows = conn.rows("SELECT sum(count) FROM usage_rollups WHERE level = 3600")
    return int(rows[0][0] or 0)


def sink(config_path: Path, workers: int, expect: int, logs: Path) -> float:
    config = load_config(config_path)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    create(conn, config.clickhouse.dedupe_window, None)
    started = time.perf_counter()
    env = {**os.environ, "METERLINE_LOG__LEVEL": "WARNING"}
    argv = [sys.executable, "-m", "meterline.cli.main", "worker", "--config", str(config_path)]
    procs = [subprocess.Popen(argv, stdout=logs.open("ab"), stderr=subprocess.STDOUT, env=env) for _ in range(workers)]
    try:
        _wait_count(conn, expect, 0.05)
        return expect / (time.perf_counter() - started)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        conn.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--produce":
        produce(Path(sys.argv[2]), *(int(a) for a in sys.argv[3:7]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="meterline-bench-"))
    stack = launch.up(root / "stack")
    try:
        run(stack, root, args)
    finally:
        launch.down(root / "stack")


def run(stack: launch.Stack, root: Path, args: argparse.Namespace) -> None:
    topic = f"bench{uuid.uuid4().hex[:8]}"
    first = with_database(stack, root, "sink1", topic, stack.postgres)
    config = load_config(first)
    ensure_topic(config.kafka.bootstrap_servers, topic, config.kafka.partitions, 1)
    for processes in (1, 2):
        rate = ack_path(first, args.events // 2, args.batch, args.senders, processes, (processes - 1) * args.events)
        print(f"ack path, {processes} sending process(es) x {args.senders} threads: {rate:,.0f} events/s")
    total = args.events // 2 * 2
    logs = root / "workers.log"
    for workers, name in ((1, "sink1"), (2, "sink2")):
        path = with_database(stack, root, name, topic, stack.postgres)
        rate = sink(path, workers, total, logs)
        print(f"sink, {workers} worker(s): {rate:,.0f} events/s ({total:,} events, 4 partitions)")
    lag_and_query(with_database(stack, root, "sink2", topic, stack.postgres), total, logs)


def lag_and_query(path: Path, total: int, logs: Path) -> None:
    config = load_config(path)
    ledger = Ledger(config)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    usage = ClickHouseUsage(conn, ledger.meters.live, SystemClock().now_us)
    argv = [sys.executable, "-m", "meterline.cli.main", "worker", "--config", str(path)]
    procs = [subprocess.Popen(argv, stdout=logs.open("ab"), stderr=subprocess.STDOUT) for _ in range(2)]
    lags = []
    try:
        _wait_count(conn, total, 0.05)
        for i in range(20):
            ledger.send(10_000_000 + i * 100, 100, "lag")
            acked = time.perf_counter()
            want = total + (i + 1) * 100
            _wait_count(conn, want, 0.01, timeout=120)
            lags.append(time.perf_counter() - acked)
        lags.sort()
        print(f"ack to queryable, 100-event requests: p50 {percentile(lags, 50) * 1000:.0f} ms,"
              f" max {lags[-1] * 1000:.0f} ms")  # fmt: skip
        meter = ledger.meters.get(NS, "tokens")
        times = []
        for _ in range(50):
            t = time.perf_counter()
            usage.query(meter, MeterQuery(start=MONTH[0], end=MONTH[1]))
            times.append(time.perf_counter() - t)
        times.sort()
        print(f"month total ({want:,} events): p50 {percentile(times, 50) * 1000:.1f} ms,"
              f" p95 {percentile(times, 95) * 1000:.1f} ms")  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        ledger.close()
        conn.close()


if __name__ == "__main__":
    main()
