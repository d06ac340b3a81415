"""Alert rules in scale mode, fired by the sink workers after each applied batch with
OpenMeter's rule (the highest threshold past fires, again only after another one fired): each
alert fires exactly once, also when a worker dies between writing a batch and evaluating the
rules, and when workers are killed with SIGKILL mid-load; a grant lowering the percentage used
fires the lower threshold at once; the fired events are delivered to a real
webhook receiver by the API node's dispatcher."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from scale_site import Site, site
from stack.launch import Stack
from starlette.testclient import TestClient
from test_alerts import SECRET, Receiver

from meterline.adapters.postgres.database import PgDatabase
from meterline.api.app import create_app
from meterline.bootstrap import Worker, open_worker
from meterline.domain.clock import SystemClock
from meterline.ports.sink import BatchFollower

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

NS = "default"
EXTRA = "\n[aggregation]\nmax_wait = 60.0\nchunk = 200\n[alerts]\nallow_private_webhook_targets = true\n"
THRESHOLDS = [
    {"type": "PERCENT", "value": 50},
    {"type": "PERCENT", "value": 80},
    {"type": "NUMBER", "value": 90},
    {"type": "PERCENT", "value": 100},
]


@dataclass
class Node:
    client: TestClient
    key: str

    def post(self, path: str, body: object) -> dict[str, Any]:
        r = self.client.post(path, json=body, headers={"Authorization": f"Bearer {self.key}"})
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    def ingest(self, events: list[dict[str, Any]]) -> None:
        r = self.client.post(
            "/api/v1/events",
            content=msgspec.json.encode(events),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/cloudevents-batch+json"},
        )
        assert r.status_code in (200, 202, 204), r.text


@pytest.fixture
def alert_site(scale_stack: Stack, tmp_path: Path) -> Iterator[Site]:
    with site(scale_stack, tmp_path / "site", partitions=2, extra=EXTRA) as s:
        yield s


@pytest.fixture
def node(alert_site: Site) -> Iterator[Node]:
    """An API node in process (real clock: the workers evaluate periods at the real time)."""
    key = alert_site.key(NS)
    with TestClient(create_app(alert_site.config, SystemClock())) as client:
        yield Node(client, key)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(lambda: int(time.time()))
    yield r
    r.server.shutdown()


def catalog(node: Node, receiver: Receiver, customers: list[str]) -> None:
    """A SUM meter, a feature on it, each customer with an allowance of 100 a month, and a
    threshold rule delivering to ``receiver``."""
    node.post(
        "/api/v1/meters", {"slug": "tokens", "eventType": "llm", "aggregation": "SUM", "valueProperty": "$.tokens"}
    )
    node.post("/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    for c in customers:
        node.post("/api/v1/customers", {"key": c, "name": c, "subjectKeys": [c, f"{c}-eu"]})
        body = {"type": "metered", "featureKey": "tokens", "issueAfterReset": 100, "usagePeriod": {"interval": "MONTH"}}
        node.post(f"/api/v1/customers/{c}/entitlements", body)
    channel = node.post(
        "/api/v1/notification/channels",
        {"type": "WEBHOOK", "name": "ops", "url": receiver.url(), "signingSecret": SECRET},
    )
    rule = {"type": "entitlements.balance.threshold", "name": "usage", "channels": [channel["id"]]}
    node.post("/api/v1/notification/rules", {**rule, "thresholds": THRESHOLDS, "features": ["tokens"]})


def ev(id_: str, subject: str, tokens: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"specversion": "1.0", "id": id_, "source": "s", "type": "llm", "subject": subject, "time": now,
            "data": {"tokens": tokens}}  # fmt: skip


def fired(s: Site) -> list[tuple[str, str]]:
    """Every recorded alert as (customer, threshold), as PostgreSQL holds them."""
    db = PgDatabase(s.config.postgres.dsn)
    try:
        with db.tx() as conn:
            rows = conn.execute("SELECT customer, threshold FROM notification_events ORDER BY 1, 2").fetchall()
        return [(str(c), str(t)) for c, t in rows]
    finally:
        db.close()


def progress(s: Site) -> int:
    """How far the rules have handled the streams, summed."""
    db = PgDatabase(s.config.postgres.dsn)
    try:
        with db.tx() as conn:
            row = conn.execute("SELECT coalesce(sum(done), 0) FROM follower_progress").fetchone()
        return 0 if row is None else int(row[0])
    finally:
        db.close()


def sql(s: Site, statement: str) -> None:
    db = PgDatabase(s.config.postgres.dsn)
    try:
        with db.tx() as conn:
            conn.execute(statement)
    finally:
        db.close()


def wait_for(condition: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Died(BaseException):
    """Stands for the process dying: nothing after it runs."""


class DiesBeforeRules:
    """A follower that dies on its first range, before the rules look at it."""

    def __init__(self, inner: BatchFollower) -> None:
        self.inner = inner

    def done(self, stream: str, applied: int) -> int:
        return self.inner.done(stream, applied)

    def follow(self, stream: str, start: int, end: int, entries: Any) -> None:
        raise Died


def step_until(worker: Worker, condition: Any, what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {worker.sink.stats} {worker.partitions.assigned()}")
        worker.sink.step()


def written(worker: Worker) -> bool:
    return worker.sink.stats.events > 0


def series(s: Site) -> dict[str, list[str]]:
    """Every recorded alert's key per customer, in the order they fired."""
    db = PgDatabase(s.config.postgres.dsn)
    try:
        with db.tx() as conn:
            rows = conn.execute(
                "SELECT customer, threshold FROM notification_events ORDER BY created_us, id"
            ).fetchall()
    finally:
        db.close()
    out: dict[str, list[str]] = {}
    for c, t in rows:
        out.setdefault(str(c), []).append(str(t))
    return out


def test_a_worker_dying_between_its_write_and_the_rules_fires_each_threshold_once(
    alert_site: Site, node: Node, receiver: Receiver
) -> None:
    catalog(node, receiver, ["acme"])
    # one event, so one batch: events of one request may reach a consumer in two fetches, and a
    # first worker dying after a part would leave the rules a different (equally exact) series
    node.ingest([ev("e1", "acme", 90)])  # 90: past 50% and 80%

    first = open_worker(alert_site.config)
    first.sink.followers = [DiesBeforeRules(f) for f in first.sink.followers]
    with pytest.raises(Died):  # the batch is in ClickHouse; the worker dies before the rules see it
        step_until(first, lambda: False, "the first batch")
    first.close()
    assert fired(alert_site) == []

    second = open_worker(alert_site.config)  # takes the partitions over: the rules see the batch first
    try:
        step_until(second, lambda: len(fired(alert_site)) == 1, "the missed alert")
        assert fired(alert_site) == [("acme", "PERCENT:80")]  # as OpenMeter: the highest threshold past
        events = second.sink.stats.events
        node.ingest([ev("e1", "acme", 90)])  # a retried event: nothing new
        node.ingest([ev("e4", "acme", 5)])  # 95: above NUMBER 90
        step_until(second, lambda: second.sink.stats.events == events + 1, "the second batch")
        step_until(second, lambda: len(fired(alert_site)) == 2, "the NUMBER 90 alert")
        node.ingest([ev("e5", "acme-eu", 10)])  # 105: 100%
        step_until(second, lambda: len(fired(alert_site)) == 3, "the 100% alert")
    finally:
        second.close()
    expected = {"acme": ["PERCENT:80", "NUMBER:90#1", "PERCENT:100#2"]}  # each after another: its place
    assert series(alert_site) == expected

    handled = progress(alert_site)
    assert handled > 0
    sql(alert_site, "DELETE FROM follower_progress")  # every range handed to the rules again: nothing new
    third = open_worker(alert_site.config)
    try:
        step_until(third, lambda: progress(alert_site) == handled, "the rules to see every range again")
    finally:
        third.close()
    assert series(alert_site) == expected

    wait_for(lambda: len(receiver.delivered) == 3, "the webhooks")  # the API node's dispatcher sends them
    assert receiver.kinds() == ["NUMBER:90", "PERCENT:100", "PERCENT:80"]
    assert receiver.bad_signatures == 0


LEVELS = {"PERCENT:50": 50, "PERCENT:80": 80, "NUMBER:90": 90, "PERCENT:100": 100}


def test_workers_killed_mid_load_fire_each_threshold_at_most_once_and_the_last_one(
    alert_site: Site, node: Node, receiver: Receiver
) -> None:
    """Which thresholds an evaluation sees depends on how the batches fall (OpenMeter fires the
    highest one past at each snapshot); with usage only growing, each fires at most once, in
    rising order, and the last one (100%) always does."""
    customers = [f"c{i}" for i in range(6)]
    catalog(node, receiver, customers)
    workers = [alert_site.worker(), alert_site.worker()]
    n = 0
    for round_ in range(10):  # 6 tokens per subject and round: 12 a customer, 120 of 100 in the end
        batch = []
        for c in customers:
            for subject in (c, f"{c}-eu"):
                n += 1
                batch.append(ev(f"e{n}", subject, 6))
        node.ingest(batch)
        node.ingest(batch[:4])  # retried: duplicates, counted once
        if round_ in (3, 6):  # SIGKILL a worker mid-load (once it applied something) ...
            wait_for(lambda: progress(alert_site) > 0, "the first batches")
            victim = workers[0 if round_ == 3 else 1]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        if round_ in (5, 8):  # ... and start it again
            workers[0 if round_ == 5 else 1] = alert_site.worker()

    def done() -> bool:
        found = series(alert_site)
        return all(found.get(c, [""])[-1].partition("#")[0] == "PERCENT:100" for c in customers)

    wait_for(done, "every customer's 100% alert")
    found = series(alert_site)
    for c in customers:
        levels = [LEVELS[k.partition("#")[0]] for k in found[c]]
        assert levels == sorted(set(levels)) and levels[-1] == 100, found[c]
    total = sum(len(keys) for keys in found.values())
    wait_for(lambda: len(receiver.delivered) == total, "the webhooks")
    assert all(len(bodies) == 1 for bodies in receiver.delivered.values())


def test_a_grant_lowering_the_percentage_used_fires_the_lower_threshold_and_the_higher_again(
    alert_site: Site, node: Node, receiver: Receiver
) -> None:
    """OpenMeter's rule in scale mode: at the grant (the API node evaluates the entitlement), the
    highest threshold past (now a lower one) fires, and the higher one fires again when usage
    reaches it; the payload carries the value the API answers."""
    catalog(node, receiver, ["acme"])
    worker = open_worker(alert_site.config)
    try:
        node.ingest([ev("e1", "acme", 85)])
        step_until(worker, lambda: len(fired(alert_site)) == 1, "the 80% alert")
        now = datetime.now(UTC).replace(second=0, microsecond=0).isoformat().replace("+00:00", "Z")
        node.post(
            "/api/v1/subjects/acme/entitlements/tokens/grants",
            {"amount": 20, "effectiveAt": now, "expiration": {"duration": "DAY", "count": 30}, "priority": 1},
        )
        # 85 of 120: past 50% (60), not 80% (96); the API node evaluates at the grant, as OpenMeter
        assert series(alert_site) == {"acme": ["PERCENT:80", "PERCENT:50#1"]}
        events = worker.sink.stats.events
        node.ingest([ev("e2", "acme", 1)])  # 86: still 50%, which fired last
        step_until(worker, lambda: worker.sink.stats.events == events + 1, "the next batch")
        assert len(fired(alert_site)) == 2
        node.ingest([ev("e3", "acme-eu", 11)])  # 97: past 96
        step_until(worker, lambda: len(fired(alert_site)) == 3, "the 80% alert again")
    finally:
        worker.close()
    assert series(alert_site) == {"acme": ["PERCENT:80", "PERCENT:50#1", "PERCENT:80#2"]}
    wait_for(lambda: len(receiver.delivered) == 3, "the webhooks")
    last = max((bodies[0] for bodies in receiver.delivered.values()), key=lambda b: b["data"]["value"]["usage"])
    r = node.client.get(
        "/api/v1/customers/acme/entitlements/tokens/value", headers={"Authorization": f"Bearer {node.key}"}
    )
    assert r.status_code == 200, r.text
    keys = ("hasAccess", "usage", "balance", "overage", "totalAvailableGrantAmount")
    assert {k: last["data"]["value"][k] for k in keys} == {k: r.json()[k] for k in keys}
    assert (last["data"]["value"]["usage"], last["data"]["value"]["totalAvailableGrantAmount"]) == (97, 120)
    assert last["data"]["threshold"] == {"type": "PERCENT", "value": 80}


def test_spike_rules_fire_once_per_hour_from_the_workers(alert_site: Site, node: Node, receiver: Receiver) -> None:
    """Spike/drop rules in scale mode: the workers' hourly scan reads the hour just ended and the
    baseline from ClickHouse, as embedded mode reads its rollups; each worker may scan, the
    alert fires once."""
    from meterline.adapters.clickhouse.client import Connection
    from meterline.adapters.clickhouse.usage import ClickHouseUsage
    from meterline.adapters.postgres.meters import PgMeters
    from meterline.bootstrap import scale_alerts
    from meterline.domain.clock import FixedClock

    hour_us = 3_600_000_000
    now_us = int(time.time() * 1_000_000)
    hour = now_us - now_us % hour_us - hour_us  # the last complete hour, at the test's start
    node.post(
        "/api/v1/meters", {"slug": "tokens", "eventType": "llm", "aggregation": "SUM", "valueProperty": "$.tokens"}
    )
    node.post("/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    for c in ("acme", "calm"):
        node.post("/api/v1/customers", {"key": c, "name": c})
        body = {"type": "metered", "featureKey": "tokens", "issueAfterReset": 10**6, "usagePeriod": {"interval": "DAY"}}
        node.post(f"/api/v1/customers/{c}/entitlements", body)
    channel = node.post(
        "/api/v1/notification/channels",
        {"type": "WEBHOOK", "name": "ops", "url": receiver.url(), "signingSecret": SECRET},
    )
    rule = {"type": "entitlements.usage.anomaly", "name": "spikes", "channels": [channel["id"]], "spikeFactor": 3}
    node.post("/api/v1/notification/rules", {**rule, "minBaseline": "0.5", "features": ["tokens"]})

    def at(us: int, id_: str, subject: str, tokens: int) -> dict[str, Any]:
        when = datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"specversion": "1.0", "id": id_, "source": "s", "type": "llm", "subject": subject, "time": when,
                "data": {"tokens": tokens}}  # fmt: skip

    baseline = [
        at(hour - k * hour_us + 1_800_000_000, f"{c}{k}", c, 1) for c in ("acme", "calm") for k in range(1, 169)
    ]
    node.ingest(baseline)  # one token an hour for 7 days, each customer
    node.ingest([at(hour + 60_000_000, "acme-spike", "acme", 10), at(hour + 60_000_000, "calm-hour", "calm", 2)])

    worker = open_worker(alert_site.config)
    pg = PgDatabase(alert_site.config.postgres.dsn)
    conn = Connection(alert_site.config.clickhouse.url, alert_site.config.clickhouse.database)
    try:
        step_until(worker, lambda: worker.sink.stats.events == 2 * 168 + 2, "every event applied")
        clock = FixedClock(hour + hour_us + 120_000_000)  # two minutes into the next hour
        scans = [
            scale_alerts(
                pg,
                PgMeters(pg, clock.now_us),
                ClickHouseUsage(conn, PgMeters(pg, clock.now_us).live, clock.now_us),
                clock,
                7,
            )
            for _ in range(2)  # two workers
        ]
        assert sum(s.scan_anomalies() for s in scans) <= 1  # the running worker's own scan may have fired it
        assert [(c, t) for c, t in fired(alert_site)] == [("acme", "spike")]  # calm's 2 is below 3x its mean 1
        wait_for(lambda: len(receiver.delivered) == 1, "the delivery")
        (payload,) = next(iter(receiver.delivered.values()))
        assert payload["data"]["kind"] == "spike" and payload["data"]["hourUsage"] in (10, "10")
        clock.advance(3600)  # the next hour holds nothing for anyone: no spike, nothing new
        assert sum(s.scan_anomalies() for s in scans) == 0
        assert len(fired(alert_site)) == 1
    finally:
        conn.close()
        pg.close()
        worker.close()
