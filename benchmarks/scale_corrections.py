"""Event corrections in scale mode on the local stack: what a void or an amend costs through a
real API node, how long the sink worker takes to apply a run of them, and what corrected hours
cost the usage queries that read them.

    ./run bench scale_corrections [--events 5000] [--corrections 200]

Starts its own stack (docs/scale.md) on free 127.0.0.1 ports and stops it at the end, with one
``meterline serve`` and one ``meterline worker`` process (2 partitions; a SUM and a MAX meter):

1. ``--events`` events over 50 subjects and 24 hours are ingested in 500-event requests and
   awaited until counted; the month's SUM and MAX queries (per subject and hour, and one total)
   are timed;
2. ``--corrections`` corrections, one at a time (every other one a void, the rest amends that
   double the value), each timed from request to 201;
3. the worker's apply time: from the last 201 until an ``eventual`` query shows the exact
   corrected total (polled every 20 ms);
4. the same queries timed again (the corrected hours are now answered from the raw events),
   and the totals checked against a hand computation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import free_port, percentile  # noqa: E402
from scale_site import site  # noqa: E402
from stack import launch  # noqa: E402

NS = "default"
EXTRA = """
[aggregation]
max_wait = 60.0
[billing]
scheduler_enabled = false
[ingest]
late_arrival_window = "P3650D"

[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"

[[meters]]
slug = "peak"
event_type = "prompt"
aggregation = "MAX"
value_property = "$.tokens"
"""
DAY = "2026-02-10"


def event(i: int, tokens: int) -> dict[str, Any]:
    return {
        "specversion": "1.0", "id": f"e{i}", "source": "bench", "type": "prompt", "subject": f"c{i % 50}",
        "time": f"{DAY}T{i % 24:02d}:{i % 60:02d}:00Z", "data": {"tokens": str(tokens)},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--corrections", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="meterline-bench-"))
    stack = launch.up(root / "stack")
    try:
        with site(stack, root / "site", partitions=2, extra=EXTRA) as s:
            s.worker()
            port = free_port()
            s.node(port)
            key = s.key(NS)
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=120
            ) as c:
                run(c, args.events, args.corrections)
    finally:
        launch.down(root / "stack")


def run(c: httpx.Client, n: int, fixes: int) -> None:
    print(f"load average before: {os.getloadavg()}")
    values = {i: 1 + i % 97 for i in range(n)}
    for first in range(0, n, 500):
        batch = [event(i, values[i]) for i in range(first, min(n, first + 500))]
        r = c.post("/api/v1/events", json=batch, headers={"Content-Type": "application/cloudevents-batch+json"})
        assert r.status_code in (200, 202, 204), r.text
    assert total(c, "tokens") == sum(values.values())  # strong: waits until the worker applied them
    before = {q: timed(c, q) for q in QUERIES}
    took = []
    for k in range(fixes):
        i = k * (n // fixes)
        started = time.perf_counter()
        if k % 2 == 0:
            r = c.post(f"/api/v1/events/e{i}/void", json={"source": "bench", "reason": "bench"})
            del values[i]
        else:
            values[i] *= 2
            amended = event(i, values[i])
            r = c.post(f"/api/v1/events/e{i}/amend", json={"source": "bench", "reason": "bench", "event": amended})
        assert r.status_code == 201, r.text
        took.append(time.perf_counter() - started)
    acked = time.perf_counter()
    while total(c, "tokens", consistency="eventual") != sum(values.values()):
        time.sleep(0.02)
    applied = time.perf_counter() - acked
    after = {q: timed(c, q) for q in QUERIES}
    assert total(c, "peak") == max(values.values())
    ms = sorted(t * 1000 for t in took)
    print(f"{n:,} events, {fixes} corrections ({fixes // 2} voids, {fixes - fixes // 2} amends), one at a time")
    print(f"correction request: p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
          f"{fixes / sum(took):,.1f} corrections/s")  # fmt: skip
    print(f"worker applied the last of them {applied * 1000:.0f} ms after its 201")
    for q in QUERIES:
        print(f"query {q}: median {before[q]:.1f} ms before, {after[q]:.1f} ms after the corrections")
    print(f"load average after: {os.getloadavg()}")


QUERIES = ("tokens-total", "tokens-hourly", "peak-hourly")


def query(c: httpx.Client, meter: str, **extra: str) -> Any:
    params = {"from": f"{DAY}T00:00:00Z", "to": "2026-02-11T00:00:00Z", **extra}
    r = c.get(f"/api/v1/meters/{meter}/query", params=params)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def total(c: httpx.Client, meter: str, **extra: str) -> Decimal:
    rows = query(c, meter, **extra)
    values = [Decimal(str(row["value"])) for row in rows]
    return sum(values, Decimal(0)) if meter == "tokens" else max(values)


def timed(c: httpx.Client, name: str, rounds: int = 15) -> float:
    meter, _, shape = name.partition("-")
    extra = {"windowSize": "HOUR", "groupBy": "subject"} if shape == "hourly" else {}
    took = []
    for _ in range(rounds):
        started = time.perf_counter()
        query(c, meter, **extra)
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


if __name__ == "__main__":
    main()
