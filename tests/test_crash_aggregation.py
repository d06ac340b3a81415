"""Crash test for the aggregator: kill -9 a real server while it aggregates a backlog and
backfills a new meter, restart it, and prove that every acknowledged event is counted exactly
once by every meter, and that the rollups equal a rebuild from the ledger — before the restart
(the crashed directory holds whole batches only) and after it."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
from conftest import Server, free_port, start_server
from test_crash import auth, meter_value, rebuild_check

BATCHES = 30
BATCH = 1000
CHUNK = "200"  # small aggregation transactions: the kill lands between and inside them


def batch(n: int) -> list[dict[str, object]]:
    return [
        {
            "specversion": "1.0",
            "id": f"{n}-{i}",
            "source": "agg-crash",
            "type": "tick",
            "subject": f"cust-{i % 7}",
            "data": {"v": n * BATCH + i + 1},
        }
        for i in range(BATCH)
    ]


def create_meter(server: Server, slug: str, aggregation: str) -> None:
    spec = {"slug": slug, "eventType": "tick", "aggregation": aggregation}
    if aggregation == "SUM":
        spec["valueProperty"] = "$.v"
    r = httpx.post(f"{server.url}/api/v1/meters", json=spec, headers=auth(server), timeout=30)
    assert r.status_code == 201, r.text


def lag(data_dir: Path) -> tuple[int, int]:
    """(ledger entries after the live offset, entries a backfilling meter still lacks)."""
    conn = sqlite3.connect(data_dir / "meterline.db")
    try:
        head = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        offset = int(conn.execute("SELECT value FROM meta WHERE key = 'aggregated_seq'").fetchone()[0])
        backfill = conn.execute("SELECT coalesce(sum(backfill_to - backfill_done), 0) FROM meters").fetchone()[0]
    finally:
        conn.close()
    return head - offset, backfill


def wait_aggregated(server: Server, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        line = next(x for x in text.splitlines() if x.startswith("meterline_rollup_lag_events"))
        if float(line.split()[-1]) == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the aggregator did not catch up")


def test_kill_9_during_aggregation_and_backfill_counts_every_event_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    env = {"METERLINE_AGGREGATION__CHUNK": CHUNK}
    first = start_server(data_dir, port=port, env=env)
    second: Server | None = None
    try:
        create_meter(first, "n", "COUNT")
        values: list[int] = []
        with httpx.Client(base_url=first.url, headers=auth(first), timeout=60) as client:
            for n in range(BATCHES):  # a backlog: each answer means "in the ledger", not "aggregated"
                events = batch(n)
                r = client.post("/api/v1/events", json=events)
                assert r.status_code == 204, r.text
                values.extend(int(e["data"]["v"]) for e in events)  # type: ignore[index]
        create_meter(first, "total", "SUM")  # created over the whole ledger: backfills from 0
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=10)
        live_lag, backfill_lag = lag(data_dir)
        print(f"\nkilled with {live_lag} entries to aggregate and {backfill_lag} to backfill")
        assert live_lag + backfill_lag > 0, "the kill must land while aggregation is under way"

        check = rebuild_check(data_dir)  # whole batches only: catching up gives the rebuild exactly
        assert check.returncode == 0, check.stdout + check.stderr
        assert lag(data_dir) == (live_lag, backfill_lag), "rebuild --check must change nothing"

        second = start_server(data_dir, port=port, env=env)
        wait_aggregated(second)
        assert meter_value(second, "n") == len(values)
        assert meter_value(second, "total") == sum(values)
        second.stop()
        check = rebuild_check(data_dir)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        for s in (first, second):
            if s is not None and s.process.poll() is None:
                s.process.kill()
                s.process.wait(timeout=10)
