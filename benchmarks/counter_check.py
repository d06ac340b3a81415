"""Scale mode: what an entitlement's usage read costs from the Redis live counters against the
ClickHouse query it replaces.

    ./run bench counter_check [--events 200000] [--reads 300]

Starts its own stack (Tansu, the chdb-backed ClickHouse endpoint, PostgreSQL, Redis; see
docs/scale.md) on free 127.0.0.1 ports and stops it at the end. Ingests ``--events`` events of
500 subjects over February 2026 through the Kafka ledger, applies them with one in-process
sink worker (which feeds the counters), times the worker with and without the counter feed,
then times ``--reads`` usage reads of one customer's ragged month (two subjects, 3 Feb 10:07
to 3 Mar 10:07, as an entitlement anchored then reads it), interleaved, by:

1. ``clickhouse``: the meter query an API node makes without counters (``ClickHouseUsage``);
2. ``redis total``: the counters' sum alone (``RedisUsageCounters.total``);
3. ``redis reader``: what an API node does with counters (``CountedUsage``: each partition's
   position checked, then the sum).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import code_version, machine, percentile  # noqa: E402
from scale_site import Site, site  # noqa: E402
from stack import launch  # noqa: E402

from meterline.adapters.clickhouse.client import Connection  # noqa: E402
from meterline.adapters.clickhouse.usage import ClickHouseUsage  # noqa: E402
from meterline.adapters.kafka.ledger import KafkaLedger, ensure_topic  # noqa: E402
from meterline.adapters.postgres.database import PgDatabase  # noqa: E402
from meterline.adapters.postgres.meters import PgMeters  # noqa: E402
from meterline.adapters.redis.live_usage import RedisUsageCounters  # noqa: E402
from meterline.bootstrap import ensure_scale_meters, open_worker, scale_dedupe  # noqa: E402
from meterline.domain.clock import SystemClock  # noqa: E402
from meterline.domain.events.decode import Limits, decode_events, split_body  # noqa: E402
from meterline.domain.meters.query import MeterQuery  # noqa: E402
from meterline.services.counter_feed import CountedUsage  # noqa: E402

NS = "default"
LIMITS = Limits(10_000, 300_000_000, None)
RANGE = (1_770_113_220, 1_772_532_420)  # 2026-02-03T10:07Z .. 2026-03-03T10:07Z
METERS = """
[aggregation]
chunk = 5000
[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
group_by = { model = "$.model" }
"""


def body(first: int, n: int) -> bytes:
    events = [
        {"specversion": "1.0", "id": f"e{i}", "source": "bench", "type": "prompt", "subject": f"c{i % 500}",
         "time": f"2026-02-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
         "data": {"tokens": f"{i % 1000}.{i % 7}", "model": f"m{i % 5}"}}
        for i in range(first, first + n)
    ]  # fmt: skip
    return msgspec.json.encode(events)


def ingest(s: Site, events: int) -> None:
    config = s.config
    k = config.kafka
    ensure_topic(k.bootstrap_servers, k.topic, k.partitions, 1)
    pg = PgDatabase(config.postgres.dsn)
    meters = PgMeters(pg, SystemClock().now_us)
    ensure_scale_meters(config, meters)
    now = SystemClock().now_us
    ledger = KafkaLedger(k.bootstrap_servers, k.topic, meters, scale_dedupe(config, pg, SystemClock()), now, cap=1000)
    try:
        for first in range(0, events, 5000):
            n = min(5000, events - first)
            ledger.append(NS, decode_events(split_body(body(first, n), "batch", 10_000), NS, now(), LIMITS)).result(120)
    finally:
        ledger.close()
        pg.close()


def apply(s: Site, events: int, counters: bool) -> float:
    """Seconds one in-process worker takes to apply every event (a fresh consumer group and
    ClickHouse database each time: the site's config with another name)."""
    redis = s.config.redis.model_copy(update={"counters": counters})
    worker = open_worker(s.config.model_copy(update={"redis": redis}))
    started = time.perf_counter()
    try:
        while worker.sink.stats.events < events:
            worker.sink.step()
        return time.perf_counter() - started
    finally:
        worker.close()


def fresh(s: Site) -> None:
    """Forget what the last worker applied: drop the ClickHouse database and the counters."""
    config = s.config
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    conn.command(f"DROP DATABASE IF EXISTS `{config.clickhouse.database}`")
    conn.close()
    import redis

    r = redis.Redis.from_url(config.redis.url)
    for name in r.scan_iter(match=f"{config.redis.key_prefix}{config.kafka.topic}:*", count=1000):
        r.delete(name)
    r.close()


def reads(s: Site, n: int) -> None:
    import redis

    config = s.config
    k = config.kafka
    pg = PgDatabase(config.postgres.dsn)
    meters = PgMeters(pg, SystemClock().now_us)
    meter = meters.get(NS, "tokens")
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    usage = ClickHouseUsage(conn, meters.live, SystemClock().now_us)
    client = redis.Redis.from_url(config.redis.url)
    counters = RedisUsageCounters(client, f"{config.redis.key_prefix}{k.topic}:")
    reader = CountedUsage(counters, {p: f"{k.topic}:{p}" for p in range(k.partitions)}, dict, usage, 0.0)
    times: dict[str, list[float]] = {"clickhouse": [], "redis total": [], "redis reader": []}

    def ch(subjects: tuple[str, ...]) -> Decimal:
        rows = usage.query(meter, MeterQuery(*RANGE, subjects=subjects))
        return sum((r.value for r in rows), Decimal(0))

    def total(subjects: tuple[str, ...]) -> Decimal:
        return counters.total(meter.key, subjects, RANGE[0] // 60, RANGE[1] // 60)

    def read(subjects: tuple[str, ...]) -> Decimal:
        return sum((r.value for r in reader.query(meter, MeterQuery(*RANGE, subjects=subjects))), Decimal(0))

    try:
        for i in range(n):
            subjects = (f"c{i % 250}", f"c{250 + i % 250}")
            answers = []
            for name, fn in (("clickhouse", ch), ("redis total", total), ("redis reader", read)):
                started = time.perf_counter()
                answers.append(fn(subjects))
                times[name].append((time.perf_counter() - started) * 1000)
            assert answers[0] == answers[1] == answers[2], (subjects, answers)
    finally:
        client.close()
        conn.close()
        pg.close()
    for name, ms in times.items():
        ms.sort()
        print(f"{name:>13}: p50 {percentile(ms, 50):6.2f} ms, p95 {percentile(ms, 95):6.2f} ms ({n} reads)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--reads", type=int, default=300)
    args = parser.parse_args()
    print(f"{code_version()}; {machine()}")
    root = Path(tempfile.mkdtemp(prefix="meterline-bench-"))
    stack = launch.up(root / "stack")
    try:
        with site(stack, root / "site", partitions=4, extra=METERS) as s:
            ingest(s, args.events)
            without = apply(s, args.events, counters=False)
            fresh(s)
            with_feed = apply(s, args.events, counters=True)
            print(f"worker, {args.events:,} events, 4 partitions: {args.events / without:,.0f} events/s without the")
            print(f"  counter feed, {args.events / with_feed:,.0f} events/s with it")
            reads(s, args.reads)
    finally:
        launch.down(root / "stack")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
