"""The live usage counters of scale mode on the local stack: fed by the sink workers from
their applied batches, they hold exactly what the ClickHouse rollups hold, over ragged ranges,
also after a worker dies between its write and the counters, after Redis loses every key (the
workers rebuild them from the raw events), and with a meter created later; API nodes read
entitlement usage from them, and from ClickHouse whenever they do not hold it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from contract.events import LIMITS
from postgres_server import fresh_schema
from stack.launch import Stack
from test_scale_alerts import Died
from test_scale_worker import NS, T0, _config, body

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.usage import ClickHouseUsage
from meterline.adapters.kafka.ledger import KafkaLedger, ensure_topic
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.meters import PgMeters
from meterline.adapters.redis.live_usage import RedisUsageCounters
from meterline.bootstrap import Worker, ensure_scale_meters, open_worker, scale_dedupe
from meterline.config import Config, load_config
from meterline.domain.clock import FixedClock
from meterline.domain.events.decode import decode_events, split_body
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery, Row
from meterline.domain.meters.windows import WindowSize
from meterline.ports.sink import BatchFollower
from meterline.services.counter_feed import CountedUsage

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

FEB = (1_769_904_000, 1_772_323_200)  # February 2026, UTC
RANGES = [FEB, (1_770_113_220, 1_771_593_180), (1_770_113_220, 1_770_113_280), (1_770_112_800, 1_770_199_200)]
SUBJECTS = [("c1",), ("c2", "c5", "c11"), ("nobody",), tuple(f"c{i}" for i in range(13))]


class Stack_:
    """The engines of one test: its topic, ClickHouse database, PostgreSQL schema, Redis prefix."""

    def __init__(self, config: Config) -> None:
        self.config = config
        k = config.kafka
        ensure_topic(k.bootstrap_servers, k.topic, k.partitions, 1)
        self.pg = PgDatabase(config.postgres.dsn)
        self.meters = PgMeters(self.pg, lambda: T0 * 1_000_000)
        ensure_scale_meters(config, self.meters)
        dedupe = scale_dedupe(config, self.pg, FixedClock(T0 * 1_000_000))
        self.ledger = KafkaLedger(k.bootstrap_servers, k.topic, self.meters, dedupe, lambda: T0 * 1_000_000, cap=1000)
        self.conn = Connection(config.clickhouse.url, config.clickhouse.database)
        self.usage = ClickHouseUsage(self.conn, self.meters.live, lambda: T0 * 1_000_000)
        self.redis = redis.Redis.from_url(config.redis.url)
        self.prefix = f"{config.redis.key_prefix}{k.topic}:"
        self.counters = RedisUsageCounters(self.redis, self.prefix)
        self.sent = 0

    def send(self, n: int) -> None:
        candidates = decode_events(split_body(body(self.sent, n), "batch", 10_000), NS, T0 * 1_000_000, LIMITS)
        self.ledger.append(NS, candidates).result(60)
        self.sent += n

    def clickhouse(self, slug: str, start: int, end: int, subjects: tuple[str, ...]) -> Decimal:
        rows = self.usage.query(self.meters.get(NS, slug), MeterQuery(start, end, subjects=subjects))
        return sum((r.value for r in rows), Decimal(0))

    def counted(self, slug: str, start: int, end: int, subjects: tuple[str, ...]) -> Decimal:
        return self.counters.total(self.meters.get(NS, slug).key, subjects, start // 60, end // 60)

    def agree(self, slugs: tuple[str, ...] = ("tokens", "prompts")) -> bool:
        for slug in slugs:
            for start, end in RANGES:
                for subjects in SUBJECTS:
                    if self.counted(slug, start, end, subjects) != self.clickhouse(slug, start, end, subjects):
                        return False
        return True

    def forget(self) -> None:
        """Redis loses every key of this deployment (a restart without persistence)."""
        for name in self.redis.scan_iter(match=self.prefix + "*", count=1000):
            self.redis.delete(name)

    def close(self) -> None:
        self.forget()
        self.redis.close()
        self.ledger.close()
        self.conn.close()
        self.pg.close()


@pytest.fixture
def engines(scale_stack: Stack, tmp_path: Path) -> Iterator[Stack_]:
    name = f"t{uuid.uuid4().hex[:12]}"
    with fresh_schema(scale_stack.postgres) as dsn:
        for path in _config(scale_stack, name, tmp_path / "scale.toml", dsn):
            s = Stack_(load_config(path, {"redis": {"counters": True}}))
            try:
                yield s
            finally:
                s.close()


def step_until(worker: Worker, condition: Any, what: str, steps: int = 2000) -> None:
    for _ in range(steps):
        if condition():
            return
        worker.sink.step()
    raise AssertionError(f"not reached: {what} ({worker.sink.stats})")


class DiesBefore:
    """A follower that dies on its first range, before it changes anything."""

    def __init__(self, inner: BatchFollower) -> None:
        self.inner = inner

    def done(self, stream: str, applied: int) -> int:
        return self.inner.done(stream, applied)

    def follow(self, stream: str, start: int, end: int, entries: Any) -> None:
        raise Died


def test_counters_hold_what_clickhouse_holds_across_a_death_a_lost_redis_and_a_new_meter(engines: Stack_) -> None:
    engines.send(1200)
    first = open_worker(engines.config)
    try:
        step_until(first, lambda: first.sink.stats.events == 1200, "every event applied")
        assert engines.counted("prompts", *FEB, ("c1",)) > 0
        assert engines.agree()
    finally:
        first.close()

    engines.send(600)  # a worker that dies after its write, before the counters see the batch
    second = open_worker(engines.config)
    second.sink.followers = [DiesBefore(f) if i == 1 else f for i, f in enumerate(second.sink.followers)]
    with pytest.raises(Died):
        step_until(second, lambda: False, "a batch")
    second.close()
    assert not engines.agree()  # ClickHouse holds a batch the counters lack

    third = open_worker(engines.config)  # takes over: the counters catch up from the raw events
    try:
        step_until(third, engines.agree, "the counters to catch up")
        step_until(third, lambda: engines.clickhouse("prompts", *FEB, SUBJECTS[-1]) == 1800, "every event")
        assert engines.agree()

        engines.forget()  # Redis loses everything: the next batch rebuilds the counters from the raw events
        engines.send(130)
        step_until(third, lambda: engines.clickhouse("prompts", *FEB, SUBJECTS[-1]) == 1930, "the new events")
        step_until(third, engines.agree, "the counters rebuilt")

        spec = MeterSpec(slug="big", event_type="prompt", aggregation=Aggregation.SUM, value_property="$.tokens")
        engines.meters.create(NS, spec)  # a meter created later: its counters start from each stream's start
        engines.send(26)
        every = SUBJECTS[-1]
        backfilled = lambda: engines.clickhouse("big", *FEB, every) == engines.clickhouse("tokens", *FEB, every)  # noqa: E731
        step_until(third, lambda: backfilled() and engines.agree(("tokens", "prompts", "big")), "the new meter")
        assert engines.counted("big", *FEB, ("c3",)) == engines.counted("tokens", *FEB, ("c3",))
    finally:
        third.close()


class Refuses:
    """A usage store that must not be asked."""

    def __init__(self) -> None:
        self.asked = 0

    def query(self, meter: Any, query: MeterQuery) -> list[Row]:
        self.asked += 1
        return []


def test_api_nodes_read_entitlement_usage_from_the_counters_only_when_they_hold_it(engines: Stack_) -> None:
    engines.send(260)
    worker = open_worker(engines.config)
    try:
        step_until(worker, lambda: worker.sink.stats.events == 260, "every event applied")
        step_until(worker, engines.agree, "the counters")
    finally:
        worker.close()
    k = engines.config.kafka
    streams = {p: f"{k.topic}:{p}" for p in range(k.partitions)}
    store = Refuses()
    reader = CountedUsage(engines.counters, streams, lambda: {}, store, max_wait=0.0)
    tokens = engines.meters.get(NS, "tokens")
    q = MeterQuery(FEB[0], FEB[1], subjects=("c1", "c2"))
    assert sum(r.value for r in reader.query(tokens, q)) == engines.clickhouse("tokens", *FEB, ("c1", "c2"))
    assert store.asked == 0
    reader.query(tokens, MeterQuery(FEB[0], FEB[1], window_size=WindowSize.DAY, subjects=("c1",)))
    reader.query(tokens, MeterQuery(FEB[0], FEB[1], subjects=("c1",), filters=(("model", ("m1",), False),)))
    assert store.asked == 2  # windows and group filters: the usage store
    behind = CountedUsage(engines.counters, streams, lambda: {0: 10**9}, store, max_wait=0.0)
    behind.query(tokens, q)  # not as far as this node's writes: the usage store
    assert store.asked == 3
    engines.forget()
    reader.query(tokens, q)  # the counters lost: the usage store
    assert store.asked == 4
