"""The server's billing scheduler, on a real HTTP server whose clock the test moves.

The app runs under uvicorn in this process so the test can hand it a ``FixedClock``; every
request goes over a real socket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import T0_US, free_port, make_key
from starlette.applications import Starlette
from test_billing_api import PLAN, calls, post_json, us

from meterline.api.app import create_app
from meterline.config import load_config
from meterline.domain.clock import FixedClock


class Served:
    """A real server on a socket, its app (for its internals) and the clock it reads."""

    def __init__(self, url: str, key: str, clock: FixedClock, app: Starlette) -> None:
        self.url, self.key, self.clock, self.app = url, key, clock, app
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def move_to(self, text: str) -> None:
        self.clock.advance((us(text) - self.clock.now_us()) / 1_000_000)

    def invoices(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.client.get("/api/v1/invoices").json()["items"]
        return items

    def wait_for_invoices(self, count: int) -> list[dict[str, Any]]:
        """Poll until ``count`` invoices exist (the scheduler works in the background)."""
        deadline = time.monotonic() + 20
        while len(items := self.invoices()) < count:
            assert time.monotonic() < deadline, f"the scheduler did not finalize invoice {count}: {items}"
            time.sleep(0.02)
        return items


@contextmanager
def serve(
    tmp_path: Path, billing: dict[str, object], prepare: Any = None, clock: FixedClock | None = None
) -> Iterator[Served]:
    """Serve ``create_app`` on a free port; ``prepare(app)`` runs before start-up."""
    data_dir = tmp_path / "data"
    key = make_key(data_dir, ["admin"])
    config = load_config(None, {"storage": {"data_dir": data_dir, "fsync": "normal"}, "billing": billing})
    clock = clock or FixedClock(T0_US)
    app = create_app(config, clock)
    if prepare is not None:
        prepare(app)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    served = Served(f"http://127.0.0.1:{port}", key, clock, app)
    try:
        yield served
    finally:
        served.client.close()
        server.should_exit = True
        thread.join(timeout=30)


def billing_setup(served: Served, *customers: str) -> None:
    """The api_calls and storage_gb meters, the published ``pro`` plan, customers subscribed from March 1."""
    c = served.client
    post_json(c, "/api/v1/meters", {"slug": "api_calls", "eventType": "request", "aggregation": "SUM",
                                    "valueProperty": "$.calls", "groupBy": {"region": "$.region"}})  # fmt: skip
    post_json(c, "/api/v1/meters", {"slug": "storage_gb", "eventType": "storage", "aggregation": "SUM",
                                    "valueProperty": "$.gb"})  # fmt: skip
    post_json(c, "/api/v1/billing/plans", PLAN)
    post_json(c, "/api/v1/billing/plans/pro/versions/1/publish", {}, 200)
    for key in customers:
        post_json(c, "/api/v1/customers", {"key": key, "subjectKeys": [key]})
        post_json(c, "/api/v1/billing/subscriptions", {"customer": key, "plan": "pro", "start": "2026-03-01T00:00:00Z"})


class _Http:
    def __init__(self, served: Served) -> None:
        self._c = served.client

    def post_events(self, events: object) -> httpx.Response:
        return self._c.post(
            "/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"}
        )


def test_the_scheduler_invoices_every_period_by_itself(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # INFO is what a server logs at by default: the run's log line must not kill the thread
    caplog.set_level(logging.INFO, logger="meterline.billing")
    with serve(tmp_path, {"scheduler_interval": 0.02}) as served:
        billing_setup(served, "acme")
        calls(_Http(served), "m1", "acme", "2026-03-01T10:00:00Z", 1500)
        served.move_to("2026-04-15T00:00:00Z")
        march = served.wait_for_invoices(1)
        calls(_Http(served), "a1", "acme", "2026-04-10T10:00:00Z", 1200)
        served.move_to("2026-05-01T00:01:00Z")
        april = served.wait_for_invoices(2)
        assert [(i["number"], i["periodStart"][:10]) for i in april] == [
            ("INV-000001", "2026-03-01"),
            ("INV-000002", "2026-04-01"),
        ]
        assert april[0] == march[0]
        assert (april[0]["total"], april[1]["total"]) == ("54.00", "51.00")  # 49 + usage above 1000 free calls
        time.sleep(0.1)  # more ticks find nothing left to do
        assert len(served.invoices()) == 2
    runs = [r for r in caplog.records if r.name == "meterline.billing" and r.getMessage().startswith("billing run")]
    assert [getattr(r, "invoices_created", None) for r in runs] == [1, 1]


class HandOff:
    """The billing run lock, with a hand-off the test arms: the scheduler thread's next run takes
    the lock and holds it until another caller is waiting for it. That makes "a manual run
    arrives while the scheduler is finalizing" happen every time, not by luck."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.armed = False
        self.holding = threading.Event()
        self.waiting = threading.Event()

    def __enter__(self) -> HandOff:
        if not self._lock.acquire(blocking=False):
            self.waiting.set()
            self._lock.acquire()
        elif self.armed and threading.current_thread().name == "meterline-billing":
            self.armed = False
            self.holding.set()
            self.waiting.wait(timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_manual_run_racing_the_scheduler_reports_the_invoices_it_found(tmp_path: Path) -> None:
    lock = HandOff()

    def prepare(app: Starlette) -> None:
        app.state.ctx.billing.runs.lock = lock

    with serve(tmp_path, {"scheduler_interval": 0.02}, prepare) as served:
        billing_setup(served, "acme", "bravo")
        lock.armed = True
        assert lock.holding.wait(timeout=20), "the scheduler did not run"
        served.move_to("2026-04-01T00:01:00Z")  # the scheduler reads the time once it holds the lock
        answer: dict[str, Any] = {}
        manual = threading.Thread(target=lambda: answer.update(served.client.post("/api/v1/billing/runs").json()))
        manual.start()  # asks while the scheduler holds the lock, then waits for it
        manual.join(timeout=30)
        invoices = served.invoices()
        assert [i["number"] for i in invoices] == ["INV-000001", "INV-000002"]
        assert lock.waiting.is_set()  # the manual run did wait for the scheduler's
        assert (answer["created"], answer["existing"]) == ([], ["INV-000001", "INV-000002"])
        # a run asked after everything was invoiced has nothing to answer for
        again = post_json(served.client, "/api/v1/billing/runs", {}, 200)
        assert (again["created"], again["existing"]) == ([], [])
