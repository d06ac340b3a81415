"""The middleware over real HTTP: a Starlette app on uvicorn and a WSGI app on wsgiref, each
wrapped in the middleware, talking to a real meterline server (or to none at all)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, start_server
from test_ingest_api import assert_problem
from test_middleware_helpers import (
    black_hole,
    by_header,
    closed_port,
    create_request_meter,
    flaky_proxy,
    metered,
    serve_stack,
    stored_events,
)
from ulid import ULID

from meterline.sdk import MiddlewareConfig, SenderOptions

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

KINDS = ["asgi", "wsgi"]
FAST = SenderOptions(max_delay=0.05, backoff_base=0.01, backoff_max=0.2)


@pytest.fixture(scope="module")
def meterline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(Path(tmp_path_factory.mktemp("meterline")))
    create_request_meter(server)
    yield server
    server.stop()


def config(url: str, key: str, **options: Any) -> MiddlewareConfig[Any]:
    return MiddlewareConfig(url=url, api_key=key, customer=by_header, **{"sender": FAST, **options})


@pytest.mark.parametrize("kind", KINDS)
def test_each_request_is_metered_exactly_once(kind: str, meterline: Server) -> None:
    customer = f"metered-{kind}"
    extra = {"event_source": f"shop-{kind}", "event_data": lambda request, status: {"plan": "gold"}}
    with serve_stack(kind, config(meterline.url, meterline.key, **extra)) as stack:
        for i in range(5):
            r = stack.get(f"/items/{i}", customer)
            assert r.status_code == 200 and r.text == f"item {i}" and r.headers["X-App"] == "yes"
        assert stack.get(customer=None).status_code == 200  # no customer: neither enforced nor metered
        stack.stop()  # ASGI: lifespan shutdown flushes; WSGI: close() flushes
        stats = stack.middleware.stats
    assert (stats.queued, stats.sent, stats.dropped, stats.failed_batches) == (5, 5, 0, 0)
    assert metered(meterline, customer) == 5
    events = stored_events(meterline, customer)
    assert len(events) == 5 and len({e["id"] for e in events}) == 5
    for e in events:
        assert ULID.from_str(e["id"]) and e["specversion"] == "1.0" and e["type"] == "request"
        assert e["source"] == f"shop-{kind}" and e["subject"] == customer
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"])
        data = e["data"]
        assert (data["method"], data["path"], data["status"], data["plan"]) == ("GET", "/items/{item_id}", 200, "gold")
        assert Decimal(str(data["duration_ms"])) >= 0


@pytest.mark.parametrize("kind", KINDS)
def test_sender_retries_reuse_event_ids_and_meterline_counts_once(kind: str, meterline: Server) -> None:
    customer = f"retried-{kind}"
    # 1st POST: meterline commits but the answer is lost; 2nd: meterline never sees it; 3rd: through.
    with flaky_proxy(meterline.url, ["forward-then-503", "503"]) as proxy:
        options = SenderOptions(max_delay=0.3, backoff_base=0.01, backoff_max=0.05)
        with serve_stack(kind, config(proxy.url, meterline.key, sender=options)) as stack:
            for _ in range(4):
                assert stack.get(customer=customer).status_code == 200
            stack.flush(queued=4)
            stats = stack.middleware.stats
    assert proxy.batches[0] == proxy.batches[1] == proxy.batches[2]
    assert len({i for batch in proxy.batches for i in batch}) == 4
    assert (stats.sent, stats.retries, stats.failed_batches) == (4, 2, 0)
    assert metered(meterline, customer) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_metering_never_blocks_while_meterline_is_unreachable(kind: str) -> None:
    """The sender waits up to 30 s for a meterline that never answers; the requests must come back
    within the test client's 5 s all the same (not a timed assertion: 5 s against 30 s)."""
    with black_hole() as url:
        options = SenderOptions(max_delay=0.01, request_timeout=30, close_timeout=0.2)
        with serve_stack(kind, config(url, "ml_key", sender=options)) as stack:
            for _ in range(3):
                assert stack.client.get("/items/7", headers={"X-Customer": "acme"}, timeout=5).status_code == 200
            stack.wait_queued(3)
            stats = stack.middleware.stats
            assert (stats.queued, stats.sent, stats.dropped) == (3, 0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_rate_limit_answers_429_and_recovers_when_the_window_moves(kind: str, meterline: Server) -> None:
    customer = f"throttled-{kind}"
    cfg = config(meterline.url, meterline.key, rate_limit="2 per 1 second")
    with serve_stack(kind, cfg) as stack:
        first, second, third = (stack.get(customer=customer) for _ in range(3))
        assert first.status_code == 200 and second.status_code == 200
        assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("2", "1")
        assert first.headers["RateLimit-Policy"] == "2;w=1" and first.headers["RateLimit-Reset"] == "1"
        assert second.headers["RateLimit-Remaining"] == "0"
        body = assert_problem(third, 429, "rate_limited")
        assert body["instance"] == "/items/7"
        assert third.headers["Retry-After"] == "1" and third.headers["RateLimit-Reset"] == "1"
        assert (third.headers["RateLimit-Limit"], third.headers["RateLimit-Remaining"]) == ("2", "0")
        assert third.headers["RateLimit-Policy"] == "2;w=1"
        assert stack.get(customer=f"other-{kind}").status_code == 200  # each customer has its own window
        time.sleep(int(third.headers["Retry-After"]))
        assert stack.get(customer=customer).status_code == 200
        stack.flush(queued=4)  # three for this customer, one for the other
    assert metered(meterline, customer) == 3  # the throttled request was not metered


@contextmanager
def unreachable(target: str) -> Iterator[str]:
    if target == "black-hole":
        with black_hole() as url:
            yield url
    else:
        yield closed_port()


@pytest.mark.parametrize("target", ["closed-port", "black-hole"])
@pytest.mark.parametrize("fail", ["open", "closed"])
@pytest.mark.parametrize("kind", KINDS)
def test_check_failure_policy_with_a_bounded_wait(
    kind: str, fail: str, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A check that meterline never answers gives up after ``check_timeout`` (a black hole would
    otherwise hold the request forever). Not a timed assertion: the check must end in a timeout
    of its own (logged as its reason), and the request must come back before the test client's
    4 s (below httpx's default 5 s, so a check that ignored ``check_timeout`` would fail)."""
    with unreachable(target) as url:
        options = SenderOptions(max_delay=0.01, close_timeout=0.1)
        cfg = config(url, "ml_key", features=[("api_calls", 1)], fail=fail, check_timeout=0.25, sender=options)
        with serve_stack(kind, cfg) as stack, caplog.at_level(logging.WARNING, logger="meterline.sdk"):
            r = stack.client.get("/items/7", headers={"X-Customer": "acme"}, timeout=4)
            if fail == "open":
                stack.wait_queued(1)
            queued = stack.middleware.stats.queued
    reasons = [str(rec.args[0]) for rec in caplog.records if "check unavailable" in rec.getMessage() and rec.args]
    expected = {"closed-port": {"ConnectError"}, "black-hole": {"ReadTimeout", "TimeoutError"}}[target]
    assert reasons and set(reasons) <= expected, reasons
    if fail == "open":
        assert r.status_code == 200 and r.headers["Meterline-Check"] == "unavailable"
        assert queued == 1  # it reached the app, so it is metered
    else:
        assert_problem(r, 503, "meterline_unavailable")
        assert r.headers["Retry-After"] == "1" and queued == 0
