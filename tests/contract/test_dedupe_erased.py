"""Erased keys in the shared dedupe stores of scale mode (PostgreSQL and Redis): after an erasure
replaced a key by its erased key (``ErasureCatalog.begin`` in PostgreSQL, ``ErasableKeys`` in
Redis), a resend of the key is a duplicate (a conflict with another payload), never claimed
again, until the erased key leaves the window; both stores answer alike."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from postgres_server import fresh_schema, server

from contract.dedupe_kit import LEASE_US, key, redis_prefix
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.dedupe import PgDedupe
from meterline.adapters.postgres.erasure import PgErasureCatalog
from meterline.adapters.redis.dedupe import RedisDedupe
from meterline.domain.clock import FixedClock
from meterline.domain.erasure import ErasureRequest, erased_digest, erased_id, pseudonym
from meterline.ports.dedupe import EventKey, Verdict

T0 = 1_772_366_400_000_000
WINDOW_US = 3600 * 1_000_000
CLAIMED, DUPLICATE, CONFLICT, BUSY = Verdict.CLAIMED, Verdict.DUPLICATE, Verdict.CONFLICT, Verdict.BUSY
Erase = Callable[[list[EventKey]], int]


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@contextmanager
def opened(kind: str, clock: FixedClock) -> Iterator[tuple[Any, Erase, Callable[[], bytes]]]:
    """A store that recognises erased keys, a function erasing keys of namespace ``default`` the
    way a scale-mode erasure does, and the erasure secret."""
    if kind == "redis":
        with redis_prefix() as (client, prefix):
            secret = uuid.uuid4().bytes
            store = RedisDedupe(client, clock.now_us, lease_us=LEASE_US, window_us=WINDOW_US, prefix=prefix,
                                secret=lambda: secret)  # fmt: skip
            yield store, lambda keys: store.erase_keys("default", erased_keys(secret, keys)), lambda: secret
        return
    with fresh_schema(server()) as dsn:
        db = PgDatabase(dsn, max_size=2)
        catalog = PgErasureCatalog(db, clock.now_us)
        pg = PgDedupe(db, clock.now_us, lease_us=LEASE_US, window_us=WINDOW_US, secret=catalog.secret)

        def erase(keys: list[EventKey]) -> int:
            secret = catalog.secret()
            subject = f"someone-{uuid.uuid4().hex}"  # a record of its own: its counts are this call's
            request = ErasureRequest("default", subject, "GDPR", "k1")
            record = catalog.begin(request, pseudonym(secret, "default", subject), {}, [], erased_keys(secret, keys))
            return int(record.counts["dedupeKeys"])

        try:
            yield pg, erase, catalog.secret
        finally:
            db.close()


def erased_keys(secret: bytes, keys: list[EventKey]) -> list[Any]:
    from meterline.ports.erasure import ErasedKey

    return [ErasedKey(k.source, k.id, erased_id(secret, k.namespace, k.source, k.id)) for k in keys]


@pytest.fixture(params=["postgres", "redis"])
def kit(request: pytest.FixtureRequest, clock: FixedClock) -> Iterator[tuple[Any, Erase, Callable[[], bytes]]]:
    with opened(request.param, clock) as found:
        yield found


def confirmed(store: Any, *keys: EventKey) -> None:
    claims = store.claim(list(keys))
    assert claims.verdicts == [CLAIMED] * len(keys)
    assert store.confirm(claims.token, list(keys)) == [True] * len(keys)


def test_a_resent_erased_key_is_a_duplicate_or_a_conflict_never_claimed(kit: Any) -> None:
    store, erase, _ = kit
    confirmed(store, key("a"), key("b"))
    assert erase([key("a")]) == 1
    assert store.claim([key("a")]).verdicts == [DUPLICATE]
    assert store.claim([key("a", b"d2")]).verdicts == [CONFLICT]
    assert store.claim([key("a"), key("a", b"d2"), key("b"), key("c")]).verdicts == [
        DUPLICATE, CONFLICT, DUPLICATE, CLAIMED
    ]  # fmt: skip
    assert store.claim([key("a", namespace="other")]).verdicts == [CLAIMED]  # another namespace's key


def test_erasing_again_replaces_nothing_and_changes_no_answer(kit: Any) -> None:
    store, erase, _ = kit
    confirmed(store, key("a"))
    assert erase([key("a"), key("never-sent")]) == 1
    assert erase([key("a")]) == 0
    assert store.claim([key("a")]).verdicts == [DUPLICATE]


def test_an_erased_key_keeps_its_confirmation_time_and_leaves_with_the_window(kit: Any, clock: FixedClock) -> None:
    store, erase, _ = kit
    confirmed(store, key("a"))
    clock.advance(600)
    erase([key("a")])
    clock.advance(WINDOW_US / 1e6 - 600)
    assert store.claim([key("a")]).verdicts == [DUPLICATE]  # the window's last instant still counts
    clock.advance(1)
    again = store.claim([key("a")])
    assert again.verdicts == [CLAIMED]
    assert store.confirm(again.token, [key("a")]) == [True]
    assert store.claim([key("a", b"d2")]).verdicts == [CONFLICT]


def test_a_pending_erased_key_is_busy(kit: Any) -> None:
    store, erase, _ = kit
    held = store.claim([key("a")])
    erase([key("a")])  # not confirmed yet (the erasure moves what it finds, as it is)
    assert store.claim([key("a")]).verdicts == [BUSY]
    assert held.verdicts == [CLAIMED]


def test_redis_holds_no_original_id_or_digest_before_or_after_the_erasure(clock: FixedClock) -> None:
    with opened("redis", clock) as (store, erase, secret):
        secret_id = f"evt-{uuid.uuid4().hex}"
        confirmed(store, key(secret_id, b"payload-digest-1"))
        before = {name: store._r.hgetall(name) for name in store._r.scan_iter(match=store._prefix + "*")}
        assert len(before) == 1
        erase([key(secret_id, b"payload-digest-1")])
        after = {name: store._r.hgetall(name) for name in store._r.scan_iter(match=store._prefix + "*")}
        assert list(after) == list(before)  # the same name: only marked erased
        ((name, fields),) = after.items()
        assert secret_id.encode() not in name and b"payload-digest-1" not in b"".join(fields.values())
        assert fields[b"d"] == erased_digest(secret(), b"payload-digest-1") and fields[b"e"] == b"1"
        assert store._r.pttl(name) > 0  # expires as the key did


def test_an_erased_key_is_no_accepted_event_to_corrections_or_to_a_confirm(kit: Any) -> None:
    """``confirmed_at`` (corrections: ``event_pruned`` or ``event_not_found``) does not see an
    erased key, nor do ``confirm`` and ``release`` (a sink reading the record again)."""
    store, erase, _ = kit
    claims = store.claim([key("a"), key("b")])
    assert store.confirm(claims.token, [key("a")]) == [True]
    assert store.confirmed_at("default", "src", "a") == T0
    erase([key("a"), key("b")])
    assert store.confirmed_at("default", "src", "a") is None
    assert store.confirm(claims.token, [key("a"), key("b")]) == [False, False]
    store.release(claims.token, [key("b")])  # an erased pending key is not released
    assert store.claim([key("a"), key("b")]).verdicts == [DUPLICATE, BUSY]
