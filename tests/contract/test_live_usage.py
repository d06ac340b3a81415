"""The UsageCounters contract (``ports.live_usage``): exact sums over any range of minutes,
and deltas applied once per (stream, meter) position, whoever applies them."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest

from meterline.adapters.memory.live_usage import MemoryUsageCounters
from meterline.domain.meters.minutes import cover

KINDS = ["memory", "redis"]
REDIS = "redis://127.0.0.1:6379/0"
DAY = 1440
M0 = 29_540_160  # 2026-03-01T00:00Z in minutes


@contextmanager
def opened(kind: str) -> Iterator[tuple[Any, Callable[[], Any]]]:
    """A store and another handle on the same one (another worker or API node)."""
    if kind == "memory":
        store = MemoryUsageCounters()
        yield store, lambda: store
        return
    import redis

    from meterline.adapters.redis.live_usage import RedisUsageCounters

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.fail("Redis is not running on 127.0.0.1:6379")
    prefix = f"test-{uuid.uuid4().hex}:"
    clients = [redis.Redis.from_url(REDIS)]

    def another() -> RedisUsageCounters:
        clients.append(redis.Redis.from_url(REDIS))
        return RedisUsageCounters(clients[-1], prefix)

    try:
        yield RedisUsageCounters(clients[0], prefix), another
    finally:
        for name in clients[0].scan_iter(match=prefix + "*", count=1000):
            clients[0].delete(name)
        for c in clients:
            c.close()


@pytest.fixture(params=KINDS)
def kit(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Callable[[], Any]]]:
    with opened(request.param) as pair:
        yield pair


def test_cover_is_exact_and_small() -> None:
    for start, end in [(M0, M0 + 31 * DAY), (M0 + 345, M0 + 30 * DAY + 17), (M0 + 5, M0 + 6), (M0, M0)]:
        fields = cover(start, end)
        minutes = 0
        for f in fields:
            minutes += {"m": 1, "h": 60, "d": DAY}[f[0]]
        assert minutes == end - start
        assert len(fields) <= 31 + 2 * (23 + 59)


def test_a_new_store_has_no_positions_and_no_usage(kit: Any) -> None:
    store, _ = kit
    assert store.positions("t:0", [1, 2]) == {1: None, 2: None}
    assert store.total(1, ["acme"], M0, M0 + DAY) == 0


def test_totals_are_exact_over_ragged_ranges_and_per_subject(kit: Any) -> None:
    store, another = kit
    deltas = {
        (1, "acme"): {M0 + 10: Decimal("0.1"), M0 + 61: Decimal("0.2"), M0 + DAY + 3: Decimal("1e-30")},
        (1, "acme-eu"): {M0 + 10: Decimal("5")},
        (2, "acme"): {M0 + 10: Decimal("7")},
    }
    assert store.add("t:0", {1: (None, 10), 2: (None, 10)}, deltas)
    reader = another()
    assert reader.positions("t:0", [1, 2, 3]) == {1: 10, 2: 10, 3: None}
    assert reader.held(["t:0", "t:1"], 2) == {"t:0": 10, "t:1": None}
    assert reader.total(1, ["acme"], M0, M0 + 2 * DAY) == Decimal("0.300000000000000000000000000001")
    assert reader.total(1, ["acme"], M0 + 11, M0 + 2 * DAY) == Decimal("0.200000000000000000000000000001")
    assert reader.total(1, ["acme"], M0 + 10, M0 + 61) == Decimal("0.1")
    assert reader.total(1, ["acme", "acme-eu"], M0, M0 + DAY) == Decimal("5.3")
    assert reader.total(2, ["acme"], M0, M0 + DAY) == 7
    assert reader.total(1, ["nobody"], M0, M0 + DAY) == 0


def test_a_range_is_added_once_per_position(kit: Any) -> None:
    store, another = kit
    first = {(1, "acme"): {M0: Decimal(2)}}
    assert store.add("t:0", {1: (None, 5)}, first)
    assert not another().add("t:0", {1: (None, 5)}, first)  # the same range again: refused, nothing added
    assert store.add("t:0", {1: (5, 9)}, {(1, "acme"): {M0 + DAY - 1: Decimal(3)}})
    assert not store.add("t:0", {1: (5, 9)}, {(1, "acme"): {M0: Decimal(3)}})
    assert store.total(1, ["acme"], M0, M0 + DAY) == 5
    assert store.add("t:1", {1: (None, 4)}, {(1, "acme"): {M0: Decimal(1)}})  # streams are independent
    assert store.total(1, ["acme"], M0, M0 + DAY) == 6


def test_positions_move_together_or_not_at_all(kit: Any) -> None:
    store, _ = kit
    assert store.add("t:0", {1: (None, 5)}, {(1, "a"): {M0: Decimal(1)}})
    both = {(1, "a"): {M0: Decimal(10)}, (2, "a"): {M0: Decimal(10)}}
    assert not store.add("t:0", {1: (None, 9), 2: (None, 9)}, both)  # meter 1 is not at None
    assert store.positions("t:0", [1, 2]) == {1: 5, 2: None}
    assert store.total(2, ["a"], M0, M0 + 1) == 0
    assert store.add("t:0", {2: (None, 9)}, both)  # only the meters moved are added
    assert store.total(1, ["a"], M0, M0 + 1) == 1
    assert store.total(2, ["a"], M0, M0 + 1) == 10


def test_move_subject_adds_to_the_target_exactly_and_drops_the_source(kit: tuple[Any, Any]) -> None:
    """An erasure moves a subject's counters to its pseudonym: every range's total over both
    stays, the subject reads nothing after, and a meter not listed keeps its counters."""
    store, _ = kit
    deltas = {
        (1, "zed"): {M0: Decimal("1.25"), M0 + 61: Decimal("2")},
        (1, "erased-x"): {M0 + 61: Decimal("0.5")},
        (2, "zed"): {M0 + 5: Decimal("7")},
    }
    assert store.add("s:0", {1: (None, 3), 2: (None, 3)}, deltas)
    before = store.total(1, ["zed", "erased-x"], M0, M0 + DAY)
    assert store.move_subject([1], "zed", "erased-x") == 1
    assert store.total(1, ["erased-x"], M0, M0 + DAY) == before == Decimal("3.75")
    assert store.total(1, ["erased-x"], M0 + 61, M0 + 62) == Decimal("2.5")
    assert store.total(1, ["zed"], M0, M0 + DAY) == 0
    assert store.total(2, ["zed"], M0, M0 + DAY) == Decimal("7")  # not listed: stays
    assert store.move_subject([1], "zed", "erased-x") == 0  # nothing left to move
