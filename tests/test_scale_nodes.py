"""Scale mode end to end, every part a real process on the local stack: two API nodes
(`meterline serve`) and two sink workers (`meterline worker`) with concurrent clients that
retry, a SIGKILL of one worker and one API node in the middle of the load, both restarted. Every
event a client got a 2xx for is counted exactly once: in the ClickHouse rollups, in the raw
table, and in an entitlement's value; and `meterline rebuild --check` finds the rollups equal to
a rebuild from the raw table."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from conftest import free_port
from scale_site import TOKEN_METERS, Site, site
from stack.launch import Stack

from meterline.adapters.clickhouse.client import Connection

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

CLIENTS = 4
BATCH = 40
BATCHES_PER_CLIENT = 10
EXTRA = (
    """
[aggregation]
chunk = 200
[dedupe]
lease = "PT5S"
[billing]
scheduler_enabled = false
"""
    + TOKEN_METERS
)


@pytest.fixture
def stack_site(scale_stack: Stack, tmp_path: Path) -> Iterator[Site]:
    with site(scale_stack, tmp_path / "site", partitions=4, extra=EXTRA) as s:
        yield s


def admin_key(config: Path) -> str:
    """`meterline keys create --config ... --scope admin`: a key in the shared catalog."""
    created = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "keys", "create", "--config", str(config), "--scope", "admin"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "METERLINE_LOG__FORMAT": "text"},
    )
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def batch(client: int, n: int, minute: str) -> list[dict[str, object]]:
    first = (client * BATCHES_PER_CLIENT + n) * BATCH
    return [
        {"specversion": "1.0", "id": f"e{i}", "source": "load", "type": "prompt", "subject": f"s{i % 3}",
         "time": minute, "data": {"tokens": f"{i}.{i % 7}"}}
        for i in range(first, first + BATCH)
    ]  # fmt: skip


class Load:
    """Clients that send their batches to either node and retry each (on the other node too)
    until it is answered 2xx with a per-event report."""

    def __init__(self, urls: list[str], key: str, minute: str) -> None:
        self.urls = urls
        self.key = key
        self.minute = minute
        self.acked: set[str] = set()
        self.retries = 0
        self.done_batches = 0
        self.lock = threading.Lock()

    def send(self, events: list[dict[str, object]], rng: random.Random) -> list[dict[str, object]]:
        body = msgspec.json.encode(events)
        headers = {
            "Authorization": f"Bearer {self.key}",
            "Content-Type": "application/cloudevents-batch+json",
            "Prefer": "return=representation",
        }
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            url = rng.choice(self.urls)
            try:
                r = httpx.post(f"{url}/api/v1/events", content=body, headers=headers, timeout=30)
                if r.status_code == 200:
                    report: list[dict[str, object]] = r.json()["events"]
                    return report
                assert r.status_code in (502, 503), r.text  # retryable: storage or overload
            except httpx.HTTPError:
                pass  # a node killed mid-request, or not listening yet
            with self.lock:
                self.retries += 1
            time.sleep(0.05)
        raise AssertionError("a batch was never acknowledged")

    def client(self, c: int) -> None:
        rng = random.Random(c)
        for n in range(BATCHES_PER_CLIENT):
            events = batch(c, n, self.minute)
            report = self.send(events, rng)
            assert {e["status"] for e in report} <= {"accepted", "duplicate"}, report
            assert not any(e.get("conflict") for e in report)
            with self.lock:
                self.acked.update(str(e["id"]) for e in report)
                self.done_batches += 1


def exact(r: httpx.Response) -> Any:
    """The JSON body with its numbers as exact decimals."""
    assert r.status_code == 200, r.text
    return json.loads(r.text, parse_float=Decimal, parse_int=Decimal)


def wait_until(check: object, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_nodes_two_workers_sigkill_mid_load_count_every_acknowledged_event_once(stack_site: Site) -> None:
    s = stack_site
    ports = [free_port(), free_port()]
    key = admin_key(s.config_path)
    workers = [s.worker(), s.worker()]
    nodes = [s.node(ports[0]), s.node(ports[1])]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    h = {"Authorization": f"Bearer {key}"}
    now = datetime.now(UTC).replace(second=0, microsecond=0)  # in the entitlement's current period
    minute = now.isoformat().replace("+00:00", "Z")
    customer = {"key": "acme", "subjectKeys": ["s0", "s1", "s2"]}
    assert httpx.post(f"{urls[0]}/api/v1/customers", json=customer, headers=h).status_code == 201
    feature = {"key": "gpt", "name": "GPT", "meterSlug": "tokens"}
    assert httpx.post(f"{urls[1]}/api/v1/features", json=feature, headers=h).status_code == 201
    ent = {"type": "metered", "featureKey": "gpt", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 10}
    assert httpx.post(f"{urls[0]}/api/v1/customers/acme/entitlements", json=ent, headers=h).status_code == 201

    load = Load(urls, key, minute)
    threads = [threading.Thread(target=load.client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    total = CLIENTS * BATCHES_PER_CLIENT
    wait_until(lambda: load.done_batches >= total // 4, "a quarter of the load")
    workers[0].send_signal(signal.SIGKILL)  # mid-load: a worker and an API node die
    nodes[1].send_signal(signal.SIGKILL)
    killed = [workers[0].wait(), nodes[1].wait()]
    wait_until(lambda: load.done_batches >= total // 2, "half of the load")
    workers[0] = s.worker()  # and come back
    nodes[1] = s.node(ports[1])
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads)
    assert killed == [-signal.SIGKILL, -signal.SIGKILL]

    ids = [f"e{i}" for i in range(total * BATCH)]
    assert load.acked == set(ids)  # every batch was acknowledged in the end
    again = Load(urls[1:], key, minute).send(batch(0, 0, minute), random.Random(0))  # a late retry
    assert {e["status"] for e in again} == {"duplicate"}

    want_count = len(ids)
    want_sum = sum((Decimal(f"{i}.{i % 7}") for i in range(len(ids))), Decimal(0))
    window = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}

    def query(meter: str) -> Decimal:
        r = httpx.get(f"{urls[0]}/api/v1/meters/{meter}/query", params=window, headers=h, timeout=60)
        return sum((row["value"] for row in exact(r)["data"]), Decimal(0))

    wait_until(lambda: query("prompts") >= want_count, f"{want_count} events in ClickHouse")
    assert query("prompts") == want_count
    assert query("tokens") == want_sum
    value = exact(httpx.get(f"{urls[1]}/api/v1/customers/acme/entitlements/gpt/value", headers=h, timeout=60))
    assert value["usage"] == want_sum
    config = s.config
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    try:
        assert conn.rows("SELECT count(), uniqExact(source, id) FROM events")[0] == (want_count, want_count)
    finally:
        conn.close()
    checked = subprocess.run(  # a rebuild from the raw table reproduces the rollups, workers running
        [sys.executable, "-m", "meterline.cli.main", "rebuild", "--check", "--config", str(s.config_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "METERLINE_LOG__FORMAT": "text"},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "identical" in checked.stdout
    s.stop()
    assert [w.returncode for w in workers] == [0, 0], s.log_tail("workers.log")
