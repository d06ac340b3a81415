"""The KeyStore contract."""

from __future__ import annotations

from typing import Any

import pytest

from meterline.domain.auth.keys import Scope, hash_key, mint
from meterline.domain.errors import NotFound

T = 1_772_366_400_000_000


def _add(keys: Any, namespace: str = "default", at: int = T, **kw: Any) -> tuple[Any, str]:
    key, secret = mint(namespace, "k", frozenset({Scope.READ, Scope.INGEST}), at)
    assert keys.add(key, hash_key(secret), **kw)
    return key, secret


def test_a_key_is_found_by_its_digest_only(keys: Any) -> None:
    key, secret = _add(keys)
    assert keys.find(hash_key(secret)) == key
    assert keys.find(hash_key(secret + "x")) is None
    assert keys.find(hash_key(secret)).scopes == frozenset({Scope.READ, Scope.INGEST})


def test_only_if_none_adds_the_first_key_only(keys: Any) -> None:
    first, _ = mint("default", "boot", frozenset({Scope.ADMIN}), T)
    assert keys.add(first, b"1" * 32, only_if_none=True)
    second, _ = mint("default", "boot", frozenset({Scope.ADMIN}), T)
    assert not keys.add(second, b"2" * 32, only_if_none=True)
    assert [k.id for k in keys.list(None)] == [first.id]


def test_list_is_oldest_first_and_per_namespace(keys: Any) -> None:
    a, _ = _add(keys, "one", T + 2)
    b, _ = _add(keys, "two", T + 1)
    c, _ = _add(keys, "one", T + 3)
    assert [k.id for k in keys.list("one")] == [a.id, c.id]
    assert [k.id for k in keys.list(None)] == [b.id, a.id, c.id]


def test_revoke_keeps_the_first_time_and_the_key_stays_findable(keys: Any) -> None:
    key, secret = _add(keys)
    assert keys.revoke(key.id, "default", T + 10).revoked_us == T + 10
    assert keys.revoke(key.id, None, T + 20).revoked_us == T + 10
    assert keys.find(hash_key(secret)).revoked_us == T + 10


def test_revoke_is_scoped_to_the_namespace(keys: Any) -> None:
    key, _ = _add(keys, "one")
    for namespace, key_id in (("two", key.id), ("one", "nope")):
        with pytest.raises(NotFound) as err:
            keys.revoke(key_id, namespace, T)
        assert err.value.code == "key_not_found"
    assert keys.list("one")[0].revoked_us is None
