"""Bounded memory for every query: limits on one answer (windows, rows), and the RSS of a real
server process under queries a hostile caller can form (meter queries, the customer portal,
entitlement history and values)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Api, build_api, start_server
from test_ingest_api import assert_problem

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

RSS_BOUND_MB = 512
"""The stated bound (README, *Bounded answers*): a server with the default ``[query]`` settings."""
EVENTS = 10_000


def vm(pid: int, field: str) -> int:
    """A memory figure of a process from /proc, in MB (VmRSS now, VmHWM its peak)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def minute(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:00Z")


class Sampler(threading.Thread):
    """Reads VmRSS every few milliseconds; the kernel's VmHWM catches what falls between."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, vm(self.pid, "VmRSS"))
            time.sleep(0.005)


def hostile_requests(now: datetime, token: str) -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
    """(method, path, params or body, headers) that each asked for millions of windows."""
    portal = {"Authorization": f"Bearer {token}"}
    out: list[tuple[str, str, dict[str, Any], dict[str, str]]] = []
    for size, years in (("MINUTE", 30), ("MINUTE", 100), ("HOUR", 100), ("HOUR", 1000), ("DAY", 1000)):
        start = datetime(2026 - years, 1, 1, tzinfo=UTC)
        rng = {"windowSize": size, "from": minute(start), "to": minute(now), "windowTimeZone": "Asia/Kathmandu"}
        open_start = {"windowSize": size, "to": minute(now.replace(year=2026 + years))}  # from the first data on
        out += [
            ("GET", "/api/v1/meters/m/query", rng, {}),
            ("POST", "/api/v1/meters/m/query", {**rng, "groupBy": ["subject", "g"]}, {}),
            ("GET", "/api/v1/meters/m/query", open_start, {}),
            ("GET", "/api/v1/portal/meters/m/query", rng, portal),
            ("GET", "/api/v1/subjects/acme/entitlements/f/history", rng, {}),
        ]
    out.append(("GET", "/api/v1/meters/m/query", {"windowSize": "MONTH", "to": "9999-12-01T00:00:00Z"}, {}))
    return out


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, int, str, datetime]]:
    """A real server with the default [query] settings and a week of per-minute usage."""
    server = start_server(tmp_path_factory.mktemp("memory") / "data")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=120) as c:
        for path, body in [
            ("/api/v1/meters", {"slug": "m", "eventType": "t", "aggregation": "SUM", "valueProperty": "$.v",
                                "groupBy": {"g": "$.g"}}),
            ("/api/v1/customers", {"key": "acme", "subjectKeys": ["s0", "s1", "s2"]}),
            ("/api/v1/features", {"key": "f", "name": "F", "meterSlug": "m"}),
            ("/api/v1/customers/acme/entitlements",
             {"type": "metered", "featureKey": "f", "issueAfterReset": 10, "usagePeriod": {"interval": "MONTH"},
              # measured from before the week of data (a history cannot start before it)
              "measureUsageFrom": (now - timedelta(days=8)).isoformat()}),
        ]:  # fmt: skip
            assert c.post(path, json=body).status_code == 201, path
        for first in range(0, EVENTS, 5_000):
            events = [
                {
                    "specversion": "1.0",
                    "id": str(i),
                    "source": "memory",
                    "type": "t",
                    "subject": f"s{i % 3}",
                    "time": (now - timedelta(minutes=i + 1)).isoformat(),
                    "data": {"v": i, "g": str(i % 5)},
                }
                for i in range(first, first + 5_000)
            ]
            assert c.post("/api/v1/events", json=events).status_code == 204
        token = c.post("/api/v1/portal/tokens", json={"subject": "s0"}).json()["token"]
        yield c, server.process.pid, token, now
    server.stop()


def test_hostile_queries_are_refused_and_the_server_stays_within_its_memory_bound(
    loaded: tuple[httpx.Client, int, str, datetime],
) -> None:
    c, pid, token, now = loaded
    sampler = Sampler(pid)
    sampler.start()
    requests = hostile_requests(now, token)
    week = {"windowSize": "MINUTE", "from": minute(now - timedelta(days=7)), "to": minute(now + timedelta(minutes=1))}

    def fire(rounds: int) -> None:
        for _ in range(rounds):
            for method, path, args, headers in requests:
                if method == "GET":
                    r = c.get(path, params=args, headers=headers)
                else:
                    r = c.post(path, json=args, headers=headers)
                assert_problem(r, 400, "too_many_windows")
            # the largest answers allowed: every row of the week, by subject and group
            assert (
                len(c.get("/api/v1/meters/m/query", params={**week, "groupBy": ["subject", "g"]}).json()["data"])
                == EVENTS
            )
            assert c.get("/api/v1/subjects/acme/entitlements/f/history", params=week).status_code == 200

    try:
        with ThreadPoolExecutor(8) as pool:
            for done in [pool.submit(fire, 2) for _ in range(8)]:
                done.result()
        fire(1)
    finally:
        sampler.done.set()
        sampler.join()
    peak = max(sampler.peak, vm(pid, "VmHWM"))
    assert peak < RSS_BOUND_MB, f"the server peaked at {peak} MB"
    assert vm(pid, "VmRSS") < RSS_BOUND_MB


# -- the limits themselves, in process -----------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path, query={"max_windows": 100, "max_rows": 50})


def test_the_window_limit_is_a_setting_named_in_the_answer(small: Api) -> None:
    assert small.create_meter(slug="m", eventType="t", aggregation="COUNT").status_code == 201
    ok = {"windowSize": "HOUR", "from": "2026-03-01T00:00:00Z", "to": "2026-03-05T04:00:00Z"}  # 100 windows
    assert small.query("m", ok).status_code == 200
    body = assert_problem(small.query("m", {**ok, "to": "2026-03-05T05:00:00Z"}), 400, "too_many_windows")
    assert body["maxWindows"] == 100 and "100" in body["detail"]
    # the first window of a range that starts mid-hour counts too
    body = assert_problem(small.query("m", {**ok, "from": "2026-02-28T23:30:00Z"}), 400, "too_many_windows")


def test_the_row_limit_is_a_setting_named_in_the_answer(small: Api) -> None:
    assert small.create_meter(slug="m", eventType="t", aggregation="COUNT").status_code == 201
    events = [
        {"specversion": "1.0", "id": str(i), "source": "s", "type": "t", "subject": f"c{i}",
         "time": "2026-03-01T10:00:00Z"}
        for i in range(60)
    ]  # fmt: skip
    assert small.post_events(events).status_code == 204
    rng = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}
    assert small.query("m", rng).json()["data"][0]["value"] == 60  # one row
    body = assert_problem(small.query("m", {**rng, "groupBy": "subject"}), 400, "too_many_rows")
    assert body["maxRows"] == 50
    assert len(small.query("m", [*rng.items(), *(("subject", f"c{i}") for i in range(50))]).json()["data"]) == 50


def test_the_showback_report_is_bounded_by_the_row_limit(small: Api) -> None:
    h = small.headers()
    assert small.create_meter(slug="m", eventType="t", aggregation="COUNT").status_code == 201
    assert small.client.post("/api/v1/customers", json={"key": "acme"}, headers=h).status_code == 201
    card = {"key": "c", "name": "C", "meter": "m", "model": {"model": "per_unit", "unitPrice": "1"}}
    plan = {"plan": "p", "name": "P", "currency": "USD", "cards": [card]}
    assert small.client.post("/api/v1/billing/plans", json=plan, headers=h).status_code == 201
    assert small.client.post("/api/v1/billing/plans/p/versions/1/publish", headers=h).status_code == 200
    sub = {"customer": "acme", "plan": "p", "start": "2020-01-01T00:00:00Z"}
    assert small.client.post("/api/v1/billing/subscriptions", json=sub, headers=h).status_code == 201
    four_years = {"from": "2020-01-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"}  # 48 monthly windows
    assert len(small.client.get("/api/v1/billing/report", params=four_years, headers=h).json()["rows"]) >= 48
    for to in ("2025-01-01T00:00:00Z", "8999-01-01T00:00:00Z"):  # 60 windows; 83,000 windows
        r = small.client.get("/api/v1/billing/report", params={**four_years, "to": to}, headers=h)
        assert assert_problem(r, 400, "too_many_rows")["maxRows"] == 50
