"""Backpressure on a real server: a burst of concurrent big ingest requests beyond the configured
bounds gets 503 overloaded with Retry-After (METER-002) for what does not fit; every event
answered 2xx is in the ledger exactly once, every refused one is not; and the server's peak
memory stays under a stated bound (the same burst without bounds takes it past 300 MB)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import msgspec
from conftest import Server
from faults import BATCH, events, launch, ledger_ids, metric, wait_until

CONNECTIONS = 200
EVENTS_PER_REQUEST = 1000
BUDGET = 2 * 1024 * 1024  # body bytes in flight: ~19 requests of ~110 KB
PEAK_RSS_MB = 150  # stated bound for this burst (idle server: ~60 MB; unbounded: ~320 MB)


def memory_mb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def burst(url: str, key: str, bodies: list[bytes]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": BATCH}
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=300) as client:
        return await asyncio.gather(*[client.post(f"{url}/api/v1/events", content=b, headers=headers) for b in bodies])


def test_a_burst_beyond_the_bounds_gets_503s_and_memory_stays_bounded(tmp_path: Path) -> None:
    env = {
        "METERLINE_SERVER__MAX_BODY_BYTES": str(BUDGET),
        "METERLINE_SERVER__MAX_BODY_BYTES_IN_FLIGHT": str(BUDGET),
        "METERLINE_SERVER__RETRY_AFTER": "2",
        "METERLINE_LOG__LEVEL": "WARNING",
    }
    server = launch(tmp_path / "data", tmp_path / "server.log", env)
    try:
        batches = [events(f"r{i}", EVENTS_PER_REQUEST) for i in range(CONNECTIONS)]
        answers = asyncio.run(burst(server.url, server.key, [msgspec.json.encode(b) for b in batches]))
        peak = memory_mb(server.process.pid, "VmHWM")
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    finally:
        server.stop()

    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) == {204, 503}, statuses
    for r in answers:
        if r.status_code == 503:
            body = r.json()
            assert body["code"] == "overloaded" and body["operationalCode"] == "METER-002", body
            assert r.headers["retry-after"] == "2"
    acked = [str(e["id"]) for r, b in zip(answers, batches, strict=True) if r.status_code == 204 for e in b]
    refused = {str(e["id"]) for r, b in zip(answers, batches, strict=True) if r.status_code == 503 for e in b}
    ledger = ledger_ids(tmp_path / "data")
    assert ledger == dict.fromkeys(acked, 1), "the ledger holds exactly the events answered 2xx, once each"
    assert not refused & set(ledger)
    assert peak < PEAK_RSS_MB, f"peak RSS {peak} MB"
    # overload is a warning, not unreadiness; the refusals are counted
    assert ready.status_code == 200 and "METER-002" in [w["operationalCode"] for w in ready.json()["warnings"]]
    assert f"meterline_requests_refused {float(statuses[503])}" in metrics
    log = (tmp_path / "server.log").read_text()
    assert '"operationalCode": "METER-002"' in log


def refused_before_body(server: Server, length: int) -> bytes:
    """A client that waits for ``100 Continue`` before sending its body is refused without
    sending it: the answer (and the connection's end) comes at once."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(
            f"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
            f"Content-Type: {BATCH}\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
    return answer


def test_a_body_without_content_length_is_charged_as_it_arrives(tmp_path: Path) -> None:
    """A chunked upload cannot slip past the byte bound: its chunks are charged as they are read."""
    bound = 64 * 1024
    env = {"METERLINE_SERVER__MAX_BODY_BYTES": str(bound), "METERLINE_SERVER__MAX_BODY_BYTES_IN_FLIGHT": str(bound)}
    server = launch(tmp_path / "data", tmp_path / "server.log", env)
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": BATCH}
    slow_body = msgspec.json.encode(events("slow", 250))  # ~25 KB
    assert len(slow_body) < bound
    go_on, answers = threading.Event(), {}

    def slow() -> Iterator[bytes]:
        yield slow_body[: len(slow_body) - 10]
        go_on.wait(60)
        yield slow_body[len(slow_body) - 10 :]

    def send(name: str, body: Iterable[bytes]) -> None:
        answers[name] = httpx.post(f"{server.url}/api/v1/events", content=body, headers=headers, timeout=120)

    try:
        first = threading.Thread(target=send, args=("slow", slow()))
        first.start()
        wait_until(lambda: (metric(server, "meterline_body_bytes_in_flight") or 0) >= len(slow_body) - 10)
        big = msgspec.json.encode(events("big", 450))  # ~45 KB: fits alone, not beside the slow one
        send("big", iter([big[:20_000], big[20_000:]]))
        expecting = refused_before_body(server, len(big))
        go_on.set()
        first.join(60)
        ledger = ledger_ids(tmp_path / "data")
    finally:
        go_on.set()
        server.stop()
    assert answers["big"].status_code == 503 and answers["big"].json()["code"] == "overloaded"
    assert answers["big"].headers["retry-after"] == "1"
    assert expecting.startswith(b"HTTP/1.1 503 ") and b"\r\nconnection: close\r\n" in expecting.lower()
    assert answers["slow"].status_code == 204
    assert set(ledger) == {f"slow-{i}" for i in range(250)}
