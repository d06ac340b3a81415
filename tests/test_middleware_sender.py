"""The background sender against a small recording HTTP server: bounded queue, retries, close."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
from test_middleware_helpers import closed_port

from meterline.sdk import EventSender, SenderOptions


@dataclass
class Recorder:
    """Answers every batch POST with ``status`` once ``gate`` is open; records the event ids."""

    status: int = 204
    gate: threading.Event = field(default_factory=threading.Event)
    batches: list[list[str]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    url: str = ""


@contextmanager
def recorder(status: int = 204, open_gate: bool = True) -> Iterator[Recorder]:
    rec = Recorder(status)
    if open_gate:
        rec.gate.set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.batches.append([e["id"] for e in msgspec.json.decode(body)])
            rec.arrived.set()
            rec.gate.wait(10)
            self.send_response(rec.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield rec
    finally:
        rec.gate.set()
        server.shutdown()
        server.server_close()


def event(i: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"e{i}", "source": "s", "type": "request", "subject": "acme", "data": {}}


def test_a_full_queue_drops_the_newest_events_and_counts_them() -> None:
    with recorder(open_gate=False) as rec:
        sender = EventSender(rec.url, "k", SenderOptions(max_queue=3, max_batch=1, max_delay=0))
        assert sender.submit(event(0))
        assert rec.arrived.wait(5)  # e0 is in flight; the queue is empty again
        assert [sender.submit(event(i)) for i in range(1, 6)] == [True, True, True, False, False]
        rec.gate.set()
        assert sender.flush(10)
        stats = sender.close()
    assert [b[0] for b in rec.batches] == ["e0", "e1", "e2", "e3"]
    assert (stats.queued, stats.sent, stats.dropped, stats.failed_batches) == (4, 4, 2, 0)


def test_batches_are_bounded_by_size() -> None:
    with recorder() as rec:
        sender = EventSender(rec.url, "k", SenderOptions(max_batch=4, max_delay=0.5))
        for i in range(10):
            sender.submit(event(i))
        sender.close()
    assert [len(b) for b in rec.batches] == [4, 4, 2]
    assert [i for b in rec.batches for i in b] == [f"e{i}" for i in range(10)]


def test_a_4xx_other_than_429_is_not_retried() -> None:
    with recorder(status=400) as rec:
        sender = EventSender(rec.url, "k", SenderOptions(max_delay=0, backoff_base=0.01))
        sender.submit(event(1))
        assert sender.flush(10)
        stats = sender.close()
    assert len(rec.batches) == 1 and (stats.failed_batches, stats.retries, stats.sent) == (1, 0, 0)


def test_429_and_5xx_are_retried_until_the_attempts_run_out() -> None:
    with recorder(status=429) as rec:
        options = SenderOptions(max_delay=0, max_attempts=3, backoff_base=0.01, backoff_max=0.02)
        sender = EventSender(rec.url, "k", options)
        sender.submit(event(1))
        assert sender.flush(10)
        stats = sender.close()
    assert rec.batches == [["e1"]] * 3 and (stats.failed_batches, stats.retries) == (1, 2)


def test_close_is_bounded_while_meterline_is_down() -> None:
    # Unbounded, 1000 attempts 0.05 s apart would keep close() busy for about 50 s; bounded, it
    # returns after its 0.3 s. The 10 s limit tells the two apart on however busy a machine.
    options = SenderOptions(max_delay=0, max_attempts=1000, backoff_base=0.05, backoff_max=0.05)
    sender = EventSender(closed_port(), "k", options)
    sender.submit(event(1))
    deadline = time.monotonic() + 10
    while sender.stats.retries < 1:  # it is retrying: meterline is down
        assert time.monotonic() < deadline, "the sender did not retry"
        time.sleep(0.01)
    started = time.perf_counter()
    stats = sender.close(timeout=0.3)
    assert time.perf_counter() - started < 10
    assert stats.sent == 0 and stats.retries >= 1
    assert not sender.submit(event(2))  # closed: counted as dropped
    reasons = sender.client.stats.dropped_by_reason  # the one left unsent at close is counted too
    assert sender.stats.dropped == 2 and (reasons["closed_unsent"], reasons["closed"]) == (1, 1)
