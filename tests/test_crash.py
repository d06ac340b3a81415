"""Crash test: kill -9 a real server under concurrent ingest, restart it, and prove that

* durability: every event acknowledged with 204 before the kill is still in the ledger
  (re-sending it comes back as ``duplicate``), and
* exactly-once: after re-sending every event that was sent (acknowledged or not), the COUNT and
  SUM meters equal the number and the sum of the distinct events — nothing lost, nothing
  counted twice — and the rollups equal a rebuild from the ledger.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
from conftest import Server, free_port, start_server

THREADS = 8
LOAD_SECONDS = 1.5
BIG_BATCH = 50
WORKER_DEADLINE_SECONDS = 15.0  # safety net: a worker never runs longer than this
RESEND_CHUNK = 1000
SOURCE = "crash-test"
BATCH_TYPE = "application/cloudevents-batch+json"


def event(thread: int, n: int) -> dict[str, object]:
    value = thread * 1_000_000 + n + 1  # unique and positive: sums are bounded by subsets
    return {
        "specversion": "1.0",
        "id": f"t{thread}-{n}",
        "source": SOURCE,
        "type": "tick",
        "subject": f"cust-{n % 5}",
        "data": {"v": value},
    }


@dataclass
class Load:
    """What one worker sent, and what it learnt about it."""

    sent: list[dict[str, object]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    maybe: list[str] = field(default_factory=list)  # no answer: may or may not be committed
    refused: list[tuple[int, str]] = field(default_factory=list)  # answered, but not 204
    requests: int = 0
    error: str | None = None


def worker(thread: int, server: Server, stop: threading.Event, load: Load) -> None:
    rng = random.Random(thread)
    deadline = time.monotonic() + WORKER_DEADLINE_SECONDS
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": BATCH_TYPE}
    n = 0
    with httpx.Client(base_url=server.url, headers=headers, timeout=10.0) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            size = 1 if rng.random() < 0.5 else BIG_BATCH
            batch = [event(thread, n + i) for i in range(size)]
            n += size
            ids = [str(e["id"]) for e in batch]
            load.sent.extend(batch)
            load.requests += 1
            try:
                r = client.post("/api/v1/events", json=batch)
            except httpx.TransportError as exc:  # killed: connection refused/reset/closed
                load.maybe.extend(ids)
                load.error = type(exc).__name__
                return
            if r.status_code == 204:
                load.acked.extend(ids)
            else:
                load.maybe.extend(ids)
                load.refused.append((r.status_code, r.text[:300]))


def auth(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.key}"}


def meter_value(server: Server, slug: str) -> Decimal:
    r = httpx.get(f"{server.url}/api/v1/meters/{slug}/query", headers=auth(server), timeout=30)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    if not data:
        return Decimal(0)
    assert len(data) == 1, data
    return Decimal(str(data[0]["value"]))


def rebuild_check(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "rebuild", "--check", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_kill_9_under_load_loses_nothing_and_counts_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    first = start_server(data_dir, port=port)
    second: Server | None = None
    loads = [Load() for _ in range(THREADS)]
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        for spec in (
            {"slug": "n", "eventType": "tick", "aggregation": "COUNT"},
            {"slug": "total", "eventType": "tick", "aggregation": "SUM", "valueProperty": "$.v"},
        ):
            r = httpx.post(f"{first.url}/api/v1/meters", json=spec, headers=auth(first), timeout=10)
            assert r.status_code == 201, r.text

        # --- load, then kill -9 while requests are in flight -------------------------------
        threads = [
            threading.Thread(target=worker, args=(i, first, stop, loads[i]), name=f"load-{i}", daemon=True)
            for i in range(THREADS)
        ]
        for t in threads:
            t.start()
        time.sleep(LOAD_SECONDS)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=10)
        # No stop signal here: with the server gone, every worker's next request fails at once,
        # so each one ends on a transport error. (Setting ``stop`` now raced a worker that was
        # between two requests under load: it left quietly and failed the assertion below.)
        for t in threads:
            t.join(timeout=15)
        assert not any(t.is_alive() for t in threads), "a load thread did not stop"
        assert first.process.returncode == -signal.SIGKILL

        sent = [e for load in loads for e in load.sent]
        acked = {i for load in loads for i in load.acked}
        maybe = {i for load in loads for i in load.maybe}
        refused = [x for load in loads for x in load.refused]
        values = {str(e["id"]): int(e["data"]["v"]) for e in sent}  # type: ignore[index]
        assert len(values) == len(sent), "event ids must be unique"
        assert acked | maybe == set(values) and not acked & maybe
        assert not refused, f"the server refused requests before the kill: {refused[:5]}"
        assert acked, "no event was acknowledged before the kill"
        # every worker ends on a transport error, so the kill hit requests in flight
        assert all(load.error for load in loads), [load.error for load in loads]
        print(
            f"\nsent={len(sent)} acked={len(acked)} maybe={len(maybe)} "
            f"requests={sum(load.requests for load in loads)} "
            f"errors={sorted({load.error for load in loads if load.error})}"
        )

        # --- the crashed data directory is consistent before anything touches it again -------
        check = rebuild_check(data_dir)
        assert check.returncode == 0, check.stdout + check.stderr

        # --- restart on the same data directory --------------------------------------------
        second = start_server(data_dir, port=port)
        count_before = meter_value(second, "n")
        sum_before = meter_value(second, "total")
        print(f"after restart, before re-send: count={count_before} sum={sum_before}")
        assert len(acked) <= count_before <= len(values)
        assert sum(values[i] for i in acked) <= sum_before <= sum(values.values())

        # --- re-send everything that was sent ----------------------------------------------
        statuses: dict[str, str] = {}
        conflicts: list[str] = []
        with httpx.Client(
            base_url=second.url,
            headers={**auth(second), "Content-Type": BATCH_TYPE, "Prefer": "return=representation"},
            timeout=30.0,
        ) as client:
            for start in range(0, len(sent), RESEND_CHUNK):
                chunk = sent[start : start + RESEND_CHUNK]
                r = client.post("/api/v1/events", json=chunk)
                assert r.status_code == 200, r.text
                report = r.json()
                assert report["rejected"] == 0, report
                assert len(report["events"]) == len(chunk)
                assert report["accepted"] + report["duplicates"] == len(chunk)
                for item, ev in zip(report["events"], chunk, strict=True):
                    assert item["id"] == ev["id"] and item["source"] == SOURCE, item
                    statuses[item["id"]] = item["status"]
                    if item.get("conflict"):
                        conflicts.append(item["id"])
        lost = sorted(i for i in acked if statuses[i] != "duplicate")
        assert not lost, f"{len(lost)} acknowledged events were lost by the kill, e.g. {lost[:10]}"
        # A byte-identical retry is a plain duplicate, never a payload conflict.
        assert not conflicts, f"{len(conflicts)} identical retries were flagged as conflicts"
        assert set(statuses.values()) <= {"accepted", "duplicate"}
        duplicates = sum(s == "duplicate" for s in statuses.values())
        # the ledger held exactly the events that come back as duplicates
        assert duplicates == count_before, (duplicates, count_before)
        recovered = sum(statuses[i] == "duplicate" for i in maybe)
        print(
            f"re-send: accepted={len(values) - duplicates} duplicates={duplicates} "
            f"(of the {len(maybe)} maybe events, {recovered} had been committed); "
            f"duplicates flagged conflict={len(conflicts)}"
        )

        # --- exactly once: every distinct event counted, none twice ------------------------
        assert meter_value(second, "n") == len(values)
        assert meter_value(second, "total") == sum(values.values())

        r = httpx.get(f"{second.url}/api/v1/events", params={"limit": 100}, headers=auth(second), timeout=30)
        assert r.status_code == 200, r.text
        listed = r.json()
        assert len(listed) == min(100, len(values))
        listed_ids = [row["event"]["id"] for row in listed]
        assert len(set(listed_ids)) == len(listed_ids)
        assert all(i in values and row["event"]["source"] == SOURCE for i, row in zip(listed_ids, listed, strict=True))

        second.stop()
        check = rebuild_check(data_dir)
        assert check.returncode == 0, check.stdout + check.stderr
        print(check.stdout.strip())
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        for s in (first, second):
            if s is not None and s.process.poll() is None:
                try:
                    s.stop()
                except subprocess.TimeoutExpired:
                    s.process.kill()
                    s.process.wait(timeout=10)
