"""The DedupeStore contract: claim, confirm, release, leases and the window."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from contract.dedupe_kit import KINDS, LEASE_US, key, opened
from meterline.domain.clock import FixedClock
from meterline.ports.dedupe import Verdict

T0 = 1_772_366_400_000_000
CLAIMED, DUPLICATE, CONFLICT, BUSY = Verdict.CLAIMED, Verdict.DUPLICATE, Verdict.CONFLICT, Verdict.BUSY
WINDOW_US = 3600 * 1_000_000


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture(params=KINDS)
def kit(request: pytest.FixtureRequest, clock: FixedClock) -> Iterator[Any]:
    with opened(request.param, clock.now_us, window_us=WINDOW_US) as pair:
        yield pair


def test_a_new_key_is_claimed_then_busy_until_confirmed_then_a_duplicate(kit: Any) -> None:
    store, another = kit
    node_b = another()
    first = store.claim([key("a")])
    assert first.verdicts == [CLAIMED]
    assert node_b.claim([key("a")]).verdicts == [BUSY]  # never "duplicate" while only claimed
    assert node_b.claim([key("a", b"other")]).verdicts == [BUSY]
    assert store.confirm(first.token, [key("a")]) == [True]
    assert node_b.claim([key("a")]).verdicts == [DUPLICATE]
    assert node_b.claim([key("a", b"other")]).verdicts == [CONFLICT]


def test_tokens_are_unique_per_call_and_confirm_is_idempotent_from_any_node(kit: Any) -> None:
    store, another = kit
    a, b = store.claim([key("a")]), store.claim([key("b")])
    assert a.token != b.token
    sink = another()
    assert sink.confirm(a.token, [key("a")]) == [True]  # the sink read the event: it confirms
    assert store.confirm(a.token, [key("a")]) == [True]  # the claimant's own confirm still holds
    assert store.confirm(b.token, [key("a")]) == [False]  # another call's token holds nothing
    assert store.confirm(a.token, [key("b"), key("zz")]) == [False, False]


def test_keys_differ_by_namespace_source_and_id(kit: Any) -> None:
    store, _ = kit
    keys = [key("a"), key("a", namespace="other"), key("a", source="s2"), key("b")]
    claims = store.claim(keys)
    assert claims.verdicts == [CLAIMED] * 4
    assert store.confirm(claims.token, keys) == [True] * 4
    assert store.claim(keys).verdicts == [DUPLICATE] * 4


def test_a_key_repeated_in_one_call_is_claimed_once(kit: Any) -> None:
    store, _ = kit
    claims = store.claim([key("a"), key("b"), key("a"), key("a", b"other")])
    assert claims.verdicts == [CLAIMED, CLAIMED, DUPLICATE, CONFLICT]
    assert claims.claimed([key("a"), key("b"), key("a"), key("a", b"other")]) == [key("a"), key("b")]


def test_a_lapsed_lease_is_taken_over_and_the_old_claimant_loses_its_confirm(kit: Any, clock: FixedClock) -> None:
    store, another = kit
    dead = store.claim([key("a"), key("b")])  # a claimant that died before it wrote
    retry = another()
    assert retry.claim([key("a")]).verdicts == [BUSY]
    clock.advance(LEASE_US / 1e6)
    taken = retry.claim([key("a", b"new")])
    assert taken.verdicts == [CLAIMED]  # a retry is never silently dropped
    assert store.confirm(dead.token, [key("a"), key("b")]) == [False, True]  # b was never taken over
    assert retry.confirm(taken.token, [key("a", b"new")]) == [True]
    assert retry.claim([key("a", b"new"), key("a")]).verdicts == [DUPLICATE, CONFLICT]  # the retry's payload won


def test_a_release_frees_the_key_at_once_but_never_a_confirmed_one(kit: Any) -> None:
    store, another = kit
    failed = store.claim([key("a"), key("b")])
    store.confirm(failed.token, [key("b")])
    store.release(failed.token, [key("a"), key("b")])  # the write of a failed; b was confirmed
    node_b = another()
    assert node_b.claim([key("a"), key("b")]).verdicts == [CLAIMED, DUPLICATE]
    assert store.confirm(failed.token, [key("a")]) == [False]


def test_a_release_by_another_token_leaves_the_claim(kit: Any) -> None:
    store, _ = kit
    held = store.claim([key("a")])
    other = store.claim([key("b")])
    store.release(other.token, [key("a")])
    assert store.claim([key("a")]).verdicts == [BUSY]
    assert store.confirm(held.token, [key("a")]) == [True]


def test_a_confirmed_key_is_remembered_for_the_window_then_claimable(kit: Any, clock: FixedClock) -> None:
    store, _ = kit
    claims = store.claim([key("a")])
    store.confirm(claims.token, [key("a")])
    clock.advance(WINDOW_US / 1e6)
    assert store.claim([key("a")]).verdicts == [DUPLICATE]  # the window's last instant still counts
    clock.advance(1)
    again = store.claim([key("a")])
    assert again.verdicts == [CLAIMED]
    assert store.confirm(claims.token, [key("a")]) == [False]


def test_prune_forgets_what_left_the_window(kit: Any, clock: FixedClock) -> None:
    store, _ = kit
    old = store.claim([key("a"), key("b")])
    store.confirm(old.token, [key("a")])  # b stays pending: its claimant died
    clock.advance(WINDOW_US / 1e6 + 60)
    fresh = store.claim([key("c")])
    store.confirm(fresh.token, [key("c")])
    assert store.prune() == 2
    assert store.claim([key("c")]).verdicts == [DUPLICATE]
    assert store.claim([key("a"), key("b")]).verdicts == [CLAIMED, CLAIMED]


def test_confirmed_at_names_only_confirmed_keys_within_the_window(kit: Any, clock: FixedClock) -> None:
    """What corrections ask to tell an event retention removed from one never accepted: only a
    confirmed claim is an accepted key, with the time it was confirmed."""
    store, another = kit
    pending = store.claim([key("a"), key("b")])  # a claimed; b claimed and confirmed a second later
    clock.advance(1)
    store.confirm(pending.token, [key("b")])
    node_b = another()
    assert node_b.confirmed_at("default", "src", "a") is None  # only claimed: maybe never written
    assert node_b.confirmed_at("default", "src", "b") == T0 + 1_000_000
    assert node_b.confirmed_at("default", "src", "never") is None
    assert node_b.confirmed_at("other", "src", "b") is None
    clock.advance(LEASE_US / 1e6)
    assert node_b.confirmed_at("default", "src", "a") is None  # a lapsed lease is no confirmation either
    clock.advance(WINDOW_US / 1e6 - LEASE_US / 1e6)
    assert node_b.confirmed_at("default", "src", "b") == T0 + 1_000_000  # the window's last instant
    clock.advance(1)
    assert node_b.confirmed_at("default", "src", "b") is None  # left the window: forgotten


def test_without_a_window_confirmed_keys_are_kept(clock: FixedClock) -> None:
    for kind in KINDS:
        with opened(kind, clock.now_us) as (store, _):
            claims = store.claim([key("a")])
            store.confirm(claims.token, [key("a")])
            clock.advance(10 * 365 * 86400)
            assert store.prune() == 0
            assert store.claim([key("a")]).verdicts == [DUPLICATE], kind
