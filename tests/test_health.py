"""Health on a real server: /readyz, /metrics and the JSON log report operational codes.

- a background thread whose step fails is logged with its traceback, counted in
  meterline_background_errors_total{thread=...} and keeps running (METER-005 stays clear);
- a writer stuck in one step (a lock held by another process) makes /readyz not ready with
  METER-005, and ready again once it moves;
- ingest latency above its threshold is a METER-004 warning; a bad key a METER-003 problem.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server
from faults import events, launch, metric, post, wait_until

from meterline.adapters.sqlite.database import DB_FILE


def log_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("health")
    env = {"METERLINE_HEALTH__MAX_INGEST_LATENCY": "0.0001", "METERLINE_HEALTH__CHECK_INTERVAL": "0.05"}
    server = launch(tmp / "data", tmp / "server.log", env)
    yield server, tmp / "server.log"
    server.stop()


def test_ready_answer_lists_warnings(watched: tuple[Server, Path]) -> None:
    server, _ = watched
    r = httpx.get(f"{server.url}/readyz", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ready" and isinstance(r.json()["warnings"], list)
    for thread in ("writer", "aggregator", "dispatch", "anomalies", "billing", "health"):
        assert metric(server, f'meterline_background_thread_up{{thread="{thread}"}}') == 1.0, thread
        assert metric(server, f'meterline_background_errors_total{{thread="{thread}"}}') is not None


def test_latency_above_threshold_is_a_meter_004_warning(watched: tuple[Server, Path]) -> None:
    server, log = watched
    assert post(server, events("latency", 5)).status_code == 204  # any request is over 0.1 ms

    def warned() -> bool:
        r = httpx.get(f"{server.url}/readyz", timeout=30)
        assert r.status_code == 200, r.text  # a warning never makes the server unready
        return any(w["check"] == "ingest_latency" and w["operationalCode"] == "METER-004" for w in r.json()["warnings"])

    wait_until(warned)
    wait_until(lambda: any(x.get("operationalCode") == "METER-004" for x in log_lines(log)))


def test_bad_key_is_a_meter_003_problem_and_logged(watched: tuple[Server, Path]) -> None:
    server, log = watched
    r = httpx.get(f"{server.url}/api/v1/meters", headers={"Authorization": "Bearer ml_nope"}, timeout=30)
    assert r.status_code == 401 and r.json()["operationalCode"] == "METER-003"
    assert (metric(server, "meterline_auth_failures_total") or 0) >= 1
    wait_until(lambda: any(x.get("operationalCode") == "METER-003" for x in log_lines(log)))
    assert "ml_nope" not in log.read_text()


def test_a_failing_background_step_is_counted_logged_and_the_thread_goes_on(watched: tuple[Server, Path]) -> None:
    server, log = watched
    name = 'meterline_background_errors_total{thread="dispatch"}'
    before = metric(server, name) or 0
    # a delivery whose channel definition cannot be read: every poll of the dispatcher fails
    conn = sqlite3.connect(server.data_dir / DB_FILE, timeout=30)
    with conn:
        conn.execute("INSERT INTO notification_channels VALUES ('broken', 'default', x'00', 0, 0, NULL)")
        conn.execute("INSERT INTO notification_events VALUES ('ev-broken', 'default', 'r', 'c', 'f', '1', 0, '{}', 0)")
        conn.execute("INSERT INTO deliveries VALUES ('ev-broken', 'broken', 'PENDING', 0, 0, NULL, NULL, 0)")
    try:
        wait_until(lambda: (metric(server, name) or 0) >= before + 2)  # failed, and ran (and failed) again
    finally:
        with conn:
            conn.execute("DELETE FROM deliveries WHERE channel = 'broken'")
        conn.close()
    assert metric(server, 'meterline_background_thread_up{thread="dispatch"}') == 1.0
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
    failures = [x for x in log_lines(log) if x.get("loop") == "dispatch"]
    assert failures and "Traceback" in str(failures[0]["exc_info"])


def test_a_stuck_writer_makes_the_server_unready_until_it_moves(tmp_path: Path) -> None:
    server = launch(tmp_path / "data", tmp_path / "server.log", {"METERLINE_HEALTH__STUCK_AFTER": "PT1S"})
    answers: list[int] = []
    try:
        locker = sqlite3.connect(server.data_dir / DB_FILE, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the writer waits
        sender = threading.Thread(target=lambda: answers.append(post(server, events("stuck", 1)).status_code))
        sender.start()

        def stuck() -> bool:
            r = httpx.get(f"{server.url}/readyz", timeout=30)
            return r.status_code == 503 and "thread:writer" in [c["check"] for c in r.json()["checks"]]

        wait_until(stuck, seconds=25)  # the writer's busy timeout is 30 s
        r = httpx.get(f"{server.url}/readyz", timeout=30)
        assert r.json()["operationalCode"] == "METER-005" and int(r.headers["retry-after"]) >= 1
        assert metric(server, 'meterline_background_thread_up{thread="writer"}') == 0.0
        locker.execute("ROLLBACK")
        locker.close()
        sender.join(60)
        assert answers == [204]
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
    finally:
        server.stop()
