"""The client SDK against real meterline servers and real producer processes: outages,
restarts, kill -9 mid-write, replay, Retry-After, accounting."""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, free_port, start_server

from meterline.client import AsyncClient, Client, ClientOptions, TLSOptions, replay

FAST = {"max_delay": 0.02, "backoff_base": 0.02, "backoff_max": 0.3}
PRODUCER = """
import sys
from meterline.client import Client, ClientOptions
url, key, spool = sys.argv[1:4]
client = Client(url, key, ClientOptions(spool_dir=spool, max_delay=0.02, backoff_base=0.02, backoff_max=0.3))
i = 0
for line in sys.stdin:  # "N": record events up to p-(N-1), telling progress every 100
    while i < int(line):
        client.record("probe", "acme", {"i": i}, id=f"p-{i}")
        i += 1
        if i % 100 == 0:
            print(i, flush=True)  # every event before this line was recorded: record() returned
"""


def _meters(server: Server, kind: str) -> None:
    headers = {"Authorization": f"Bearer {server.key}"}
    for spec in (
        {"slug": f"{kind}_count", "eventType": kind, "aggregation": "COUNT"},
        {"slug": f"{kind}_sum", "eventType": kind, "aggregation": "SUM", "valueProperty": "$.i"},
    ):
        assert httpx.post(f"{server.url}/api/v1/meters", json=spec, headers=headers).status_code == 201


def _total(server: Server, meter: str) -> int:
    r = httpx.get(f"{server.url}/api/v1/meters/{meter}/query", headers={"Authorization": f"Bearer {server.key}"})
    assert r.status_code == 200, r.text
    return sum(int(row["value"]) for row in r.json()["data"])


def _assert_exactly(server: Server, at_least: int, kind: str = "probe") -> int:
    """The server holds events p-0 .. p-(K-1), each counted once, for some K >= ``at_least``."""
    k = _total(server, f"{kind}_count")
    assert k >= at_least
    assert _total(server, f"{kind}_sum") == k * (k - 1) // 2
    return k


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("client") / "server-data")
    yield s
    s.stop()


@pytest.fixture
def meterline(shared: Server) -> Server:
    return shared


_kinds = iter(range(1, 10**6))


@pytest.fixture
def kind(shared: Server) -> str:
    """This test's own event type (and id prefix), with its meters on the shared server."""
    name = f"k{os.getpid()}_{next(_kinds)}"
    _meters(shared, name)
    return name


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path / "server-data")
    _meters(s, "probe")
    yield s
    s.stop()


def _read_until(process: subprocess.Popen[str], count: int, ask: bool = True) -> int:
    assert process.stdout is not None and process.stdin is not None
    if ask:
        process.stdin.write(f"{count}\n")
        process.stdin.flush()
    while line := process.stdout.readline():
        if int(line) >= count:
            return int(line)
    raise AssertionError(f"the producer ended early with {process.wait()}")


def test_a_producer_killed_mid_write_through_outages_loses_nothing_and_replay_counts_each_event_once(
    tmp_path: Path, own_server: Server
) -> None:
    meterline = own_server
    spool = tmp_path / "spool"
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, meterline.url, meterline.key, str(spool)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _read_until(producer, 2000)
        meterline.stop()  # an outage: the producer keeps recording into its spool
        _read_until(producer, 5000)
        restarted = start_server(meterline.data_dir, port=meterline.port)
        _read_until(producer, 8000)
        restarted.stop()  # a second outage, and the producer dies in it, in the middle of its writes
        recorded = _read_until(producer, 9000)
        producer.stdin.write("1000000000\n")  # type: ignore[union-attr]
        producer.stdin.flush()  # type: ignore[union-attr]
        recorded = _read_until(producer, 9500, ask=False)  # it is writing as fast as it can
        producer.send_signal(signal.SIGKILL)
        producer.wait(30)
    finally:
        if producer.poll() is None:
            producer.kill()
    server = start_server(meterline.data_dir, port=meterline.port)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "meterline.cli.main", "replay", str(spool), "--url", server.url],
            env={**os.environ, "METERLINE_API_KEY": server.key},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert "left 0" in result.stdout
        k = _assert_exactly(server, recorded)
        again = subprocess.run(
            [sys.executable, "-m", "meterline.cli.main", "replay", str(spool), "--url", server.url],
            env={**os.environ, "METERLINE_API_KEY": server.key},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0 and "sent 0 events" in again.stdout, again.stdout + again.stderr
        assert _assert_exactly(server, recorded) == k
    finally:
        server.stop()


def test_a_restarted_producer_sends_what_its_previous_process_left(
    tmp_path: Path, meterline: Server, kind: str
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    spool = tmp_path / "spool"
    first = Client(down, meterline.key, ClientOptions(spool_dir=spool, **FAST))  # type: ignore[arg-type]
    for i in range(300):
        first.record(kind, "acme", {"i": i}, id=f"{kind}-{i}")
    stats = first.close(timeout=0.1)
    assert (stats.recorded, stats.sent, stats.pending, stats.dropped) == (300, 0, 300, 0)
    second = Client(meterline.url, meterline.key, ClientOptions(spool_dir=spool, **FAST))  # type: ignore[arg-type]
    assert second.flush(60)  # before any record: what the first process left is sent
    assert second.stats.sent == 300
    for i in range(300, 400):
        second.record(kind, "acme", {"i": i}, id=f"{kind}-{i}")
    assert second.flush(60)
    stats = second.close()
    assert (stats.sent, stats.pending, stats.dropped) == (400, 0, 0)
    assert _assert_exactly(meterline, 400, kind) == 400


def test_without_a_spool_the_queue_is_bounded_and_every_event_is_accounted_for(meterline: Server) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    client = Client(down, meterline.key, ClientOptions(max_queue=5, max_batch=2, **FAST))  # type: ignore[arg-type]
    ids = [client.record("probe", "acme", {"i": i}) for i in range(25)]
    stats = client.close(timeout=0.1)
    assert stats.recorded == len([i for i in ids if i]) and stats.sent == 0
    assert stats.dropped_by_reason["queue_full"] == ids.count(None) > 0
    assert stats.dropped == 25 - stats.pending and stats.pending == 0
    assert stats.dropped_by_reason["closed_unsent"] == stats.recorded
    assert client.record("probe", "acme") is None and client.stats.dropped_by_reason["closed"] == 1


def test_events_the_server_rejects_are_counted_with_its_reason(meterline: Server, kind: str) -> None:
    with Client(meterline.url, meterline.key, ClientOptions(**FAST)) as client:  # type: ignore[arg-type]
        client.record(kind, "acme", {"i": 0}, id=f"{kind}-0")
        client.record(kind, "", {"i": 1})  # no subject: meterline rejects it
        client.record(kind, "acme", {"i": 0}, id=f"{kind}-0")  # the same id again: a duplicate
        assert client.flush(60)
        stats = client.stats
    assert (stats.accepted, stats.duplicates, stats.dropped_by_reason["rejected"]) == (1, 1, 1)
    assert dict(stats.rejected_by_reason) == {"missing_field": 1} or sum(stats.rejected_by_reason.values()) == 1


def test_the_async_client_records_without_waiting_and_flushes(meterline: Server, kind: str) -> None:
    async def produce() -> Any:
        async with AsyncClient(meterline.url, meterline.key, ClientOptions(**FAST)) as client:  # type: ignore[arg-type]
            for i in range(500):
                await client.record(kind, "acme", {"i": i}, id=f"{kind}-{i}")
            assert await client.flush(60)
            return client.stats

    stats = asyncio.run(produce())
    assert (stats.sent, stats.dropped) == (500, 0)
    assert _assert_exactly(meterline, 500, kind) == 500


def test_retry_after_is_honoured_and_the_batch_is_resent_unchanged() -> None:
    arrivals: list[tuple[float, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            arrivals.append((time.monotonic(), body))
            self.send_response(503 if len(arrivals) == 1 else 204)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        options = ClientOptions(max_delay=0, backoff_base=0.01, backoff_max=0.01)
        with Client(f"http://127.0.0.1:{httpd.server_port}", "k", options) as client:
            client.record("probe", "acme", {"i": 1})
            assert client.flush(60)
            stats = client.stats
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(arrivals) == 2 and arrivals[0][1] == arrivals[1][1]
    assert arrivals[1][0] - arrivals[0][0] >= 0.95  # the server's 1 s, not our 0.01 s backoff
    assert (stats.retries, stats.sent) == (1, 1)


def test_replay_skips_a_spool_a_live_producer_owns(tmp_path: Path, meterline: Server, kind: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    client = Client(down, meterline.key, ClientOptions(spool_dir=tmp_path / "spool", **FAST))  # type: ignore[arg-type]
    client.record(kind, "acme", {"i": 0}, id=f"{kind}-0")
    report = replay(tmp_path / "spool", meterline.url, meterline.key)
    assert report.slots == 0 and len(report.busy) == 1
    client.close(timeout=0.1)
    report = replay(tmp_path / "spool", meterline.url, meterline.key)
    assert report.stats is not None and (report.slots, report.stats.sent, report.stats.pending) == (1, 1, 0)


def test_bad_options_are_listed_at_once() -> None:
    with pytest.raises(ValueError) as info:
        Client("ftp://x", None, ClientOptions(max_batch=0, request_timeout=0, tls=TLSOptions(key_file="k.pem")))
    assert len(info.value.problems) == 4  # type: ignore[attr-defined]


ALONE = """
import sys
BLOCKED = {"starlette", "uvicorn", "pydantic", "numpy", "jinja2", "babel", "limits", "yaml", "jsonpath", "jwt",
           "click", "rich", "prometheus_client", "psutil", "dateutil", "isodate"}
class Block:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in BLOCKED or (name.startswith("meterline.") and not name.startswith("meterline.client")):
            raise ImportError(f"the client imported {name}")
        return None
sys.meta_path.insert(0, Block())
from meterline.client import Client, ClientOptions
url, key, kind = sys.argv[1:4]
with Client(url, key, ClientOptions(max_delay=0)) as client:
    client.record(kind, "acme", {"i": 0}, id=f"{kind}-0")
    assert client.flush(60)
    print(client.stats.sent)
"""


def test_the_client_needs_none_of_the_servers_libraries(meterline: Server, kind: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", ALONE, meterline.url, meterline.key, kind], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr
    assert _assert_exactly(meterline, 1, kind) == 1


def test_the_middleware_meters_through_the_spool_and_a_replay_delivers_it(
    tmp_path: Path, meterline: Server, kind: str
) -> None:
    from meterline.sdk import MeterlineWSGIMiddleware, MiddlewareConfig, SenderOptions

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    down = f"http://127.0.0.1:{free_port()}"
    sender = SenderOptions(spool_dir=tmp_path / "spool", max_delay=0.01, backoff_max=0.2)
    config = MiddlewareConfig(
        url=down,
        api_key=meterline.key,
        customer=lambda e: "acme",
        event_type=kind,
        event_data=lambda e, status: {"i": 0},  # this test's sum meter reads data.i
        sender=sender,
    )
    middleware = MeterlineWSGIMiddleware(app, config)
    for _ in range(20):
        body = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda status, headers, exc=None: None)
        list(body)
        body.close()  # type: ignore[attr-defined]
    stats = middleware.close(timeout=0.1)
    assert (stats.queued, stats.sent, stats.dropped) == (20, 0, 0)
    report = replay(tmp_path / "spool", meterline.url, meterline.key)
    assert report.stats is not None and report.stats.sent == 20
    assert _total(meterline, f"{kind}_count") == 20
