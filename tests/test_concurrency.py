"""Concurrent retries against a real server: counted once, and requests share commits."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgspec
from conftest import Server


def test_concurrent_retries_count_once_and_share_commits(server: Server) -> None:
    h = {"Authorization": f"Bearer {server.key}"}
    meter = {"slug": "n", "eventType": "tick", "aggregation": "SUM", "valueProperty": "$.v"}
    assert httpx.post(f"{server.url}/api/v1/meters", json=meter, headers=h).status_code == 201
    events = [
        {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "race",
            "type": "tick",
            "subject": f"c{i % 7}",
            "data": {"v": i},
        }
        for i in range(200)
    ]
    bodies = [msgspec.json.encode([e]) for e in events] * 4  # every event sent 4 times, interleaved
    headers = {**h, "Content-Type": "application/cloudevents-batch+json", "Prefer": "return=representation"}

    def send(chunk: list[bytes]) -> list[str]:
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            return [client.post("/api/v1/events", content=b).json()["events"][0]["status"] for b in chunk]

    with ThreadPoolExecutor(16) as pool:
        statuses = [s for part in pool.map(send, [bodies[i::16] for i in range(16)]) for s in part]
    assert statuses.count("accepted") == 200 and statuses.count("duplicate") == 600
    rows = httpx.get(f"{server.url}/api/v1/meters/n/query", headers=h).json()["data"]
    assert [r["value"] for r in rows] == [sum(range(200))]
    metrics = httpx.get(f"{server.url}/metrics").text
    commits = float(re.search(r"^meterline_group_commits (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    print(f"{len(bodies)} requests in {commits:.0f} commits")
    assert commits < 800, "16 concurrent clients should share commits"
