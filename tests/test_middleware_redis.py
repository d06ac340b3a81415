"""The middleware's rate limit shared by several processes through a real Redis server.

The machine's Redis (127.0.0.1:6379) is used; each test takes a fresh key prefix through a
unique customer name so runs never see each other's windows."""

from __future__ import annotations

import socket
import uuid

import pytest

from meterline.sdk import RateLimiter

REDIS = "redis://127.0.0.1:6379"


@pytest.fixture(autouse=True)
def redis_running() -> None:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (start it: redis-server --daemonize yes)")


def test_two_limiters_share_one_window_through_redis() -> None:
    customer = f"acme-{uuid.uuid4()}"
    a = RateLimiter("5 per 10 seconds", REDIS)  # as if in two app processes
    b = RateLimiter("5 per 10 seconds", REDIS)
    assert a.shared and b.shared
    states = [(a if i % 2 else b).hit(customer) for i in range(7)]
    assert all(s is not None for s in states)
    assert [s.allowed for s in states if s] == [True] * 5 + [False] * 2
    last = states[-1]
    assert last is not None and last.remaining == 0 and 1 <= last.reset_after <= 10
    other = a.hit(f"other-{uuid.uuid4()}")  # windows are per customer
    assert other is not None and other.allowed and other.remaining == 4


def test_an_unreachable_redis_lets_requests_through() -> None:
    limiter = RateLimiter("1 per 10 seconds", "redis://127.0.0.1:1")
    assert limiter.hit("acme") is None  # fail open: the caller lets the request through
