"""The dedupe store in Redis (``ports.dedupe.DedupeStore``): one hash per idempotency key,
every call one Lua script, so each runs alone on the server (the same steps as the PostgreSQL
store, see its module and docs/scale.md). Keys carry a TTL of the window plus the lease, so Redis
forgets them by itself; the window itself is checked against the caller's clock in the script.

Durability is Redis's: without ``appendonly yes`` and ``appendfsync always`` a server restart
forgets confirmed keys, and a retry after it is accepted again (counted twice). That is why
PostgreSQL is the default (docs/scale.md has the measurement).

At rest: a key's hash is named ``<prefix>dk:`` + the hex of ``domain.erasure.dedupe_key`` (128
bits of the key's HMAC under the erasure secret) and holds the keyed payload digest
(``dedupe_digest``), state, token and time: no key name or value ever holds an event id, source,
namespace or payload digest, from the claim on (as the PostgreSQL store, migration 18). A store
written by an older version (plaintext names, ``<prefix>dd:``) is converted once by
``adapters.redis.dedupe_upgrade`` with every node of that version stopped; a node refuses to
start on it before (``check_format``).

Erased keys, as in the PostgreSQL store (``adapters.postgres.dedupe``): an erasure of a subject
(``erase_keys``) marks each of its keys' hashes erased (field ``e``; the name is the one it had,
its erased id begins with it). An erased hash answers a claim as before (confirmed: DUPLICATE or
CONFLICT by the keyed digest; pending: BUSY), is claimed again only once it left the window, and
is invisible to ``confirm``, ``release`` and ``confirmed_at``. A claim costs one HMAC per key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis

from meterline.domain.erasure import dedupe_digest, dedupe_key, dedupe_key_of_erased
from meterline.domain.errors import ConfigError, StorageUnavailable
from meterline.ports.dedupe import Claims, EventKey, Verdict
from meterline.ports.erasure import ErasedKey

# KEYS: the keys' names; ARGV: token, now, floor (confirmed before it: out of the window), lease
# end, ttl ms, then one keyed digest per key. Returns one code per key: 0 claimed, 1 duplicate,
# 2 conflict, 3 busy. A hash is taken over when it left the window, or when it is a lapsed lease
# that is not erased; otherwise it answers (confirmed, or pending under this call's token: by
# the digest; pending under another: busy).
_CLAIM = """
local token, now, floor, lease, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local out = {}
for i, k in ipairs(KEYS) do
  local digest = ARGV[5 + i]
  local row = redis.call('HMGET', k, 's', 't', 'd', 'a', 'e')
  local at = tonumber(row[4])
  if row[1] == false or at < floor or (row[1] == 'p' and row[5] == false and at <= now) then
    redis.call('DEL', k)
    redis.call('HSET', k, 's', 'p', 't', token, 'd', digest, 'a', lease)
    redis.call('PEXPIRE', k, ttl)
    out[i] = 0
  elseif row[1] == 'c' or row[2] == token then
    if row[3] == digest then out[i] = 1 else out[i] = 2 end
  else
    out[i] = 3
  end
end
return out
"""
# ARGV: token, now, ttl ms. Returns 1 per key confirmed under the token, else 0.
_CONFIRM = """
local out = {}
for i, k in ipairs(KEYS) do
  local row = redis.call('HMGET', k, 's', 't', 'e')
  if row[2] == ARGV[1] and row[3] == false then
    if row[1] == 'p' then
      redis.call('HSET', k, 's', 'c', 'a', ARGV[2])
      redis.call('PEXPIRE', k, ARGV[3])
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
_RELEASE = """
for _, k in ipairs(KEYS) do
  local row = redis.call('HMGET', k, 's', 't', 'e')
  if row[1] == 'p' and row[2] == ARGV[1] and row[3] == false then redis.call('DEL', k) end
end
return 0
"""
# Marks each present, not yet erased hash erased (its TTL stays); how many were marked.
_ERASE = """
local n = 0
for _, k in ipairs(KEYS) do
  local row = redis.call('HMGET', k, 's', 'e')
  if row[1] ~= false and row[2] == false then
    redis.call('HSET', k, 'e', '1')
    n = n + 1
  end
end
return n
"""
_CODES = [Verdict.CLAIMED, Verdict.DUPLICATE, Verdict.CONFLICT, Verdict.BUSY]
FOREVER_MS = 10 * 365 * 86400 * 1000
FORMAT = "keyed"
"""The value of ``<prefix>dd-format`` once the store holds keyed names only."""


class RedisDedupe:
    def __init__(
        self,
        client: redis.Redis,
        now_us: Callable[[], int],
        *,
        lease_us: int,
        window_us: int | None = None,
        prefix: str = "meterline:",
        secret: Callable[[], bytes],
    ) -> None:
        """``secret``: the erasure secret, which names the keys (the catalog's)."""
        self._r = client
        self._secret = secret
        self._now_us = now_us
        self._lease_us = lease_us
        self._window_us = window_us
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._confirm = client.register_script(_CONFIRM)
        self._release = client.register_script(_RELEASE)
        self._erase = client.register_script(_ERASE)
        span_us = FOREVER_MS * 1000 if window_us is None else window_us + lease_us
        self._ttl_ms = span_us // 1000 + 60_000

    def claim(self, keys: Sequence[EventKey]) -> Claims:
        token = uuid.uuid4().hex
        now = self._now_us()
        floor = -(2**62) if self._window_us is None else now - self._window_us
        secret = self._secret()
        argv: list[Any] = [token, now, floor, now + self._lease_us, self._ttl_ms]
        argv += [dedupe_digest(secret, k.digest) for k in keys]
        codes = self._call(self._claim, self._names(secret, keys), argv)
        return Claims(token, [_CODES[int(c)] for c in codes])

    def confirm(self, token: str, keys: Sequence[EventKey]) -> list[bool]:
        codes = self._call(self._confirm, self._names(self._secret(), keys), [token, self._now_us(), self._ttl_ms])
        return [bool(int(c)) for c in codes]

    def release(self, token: str, keys: Sequence[EventKey]) -> None:
        self._call(self._release, self._names(self._secret(), keys), [token])

    def confirmed_at(self, namespace: str, source: str, event_id: str) -> int | None:
        floor = -(2**62) if self._window_us is None else self._now_us() - self._window_us
        name = self._name(dedupe_key(self._secret(), namespace, source, event_id))
        try:
            state, at, erased = self._r.hmget(name, ["s", "a", "e"])  # type: ignore[misc]
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
        if state not in (b"c", "c") or erased is not None or at is None or int(at) < floor:
            return None
        return int(at)

    def erase_keys(self, namespace: str, keys: Sequence[ErasedKey]) -> int:
        """Each key's hash marked erased (``ports.erasure.ErasableKeys``); how many were marked
        now. Idempotent: a key already marked is not counted again."""
        names = [self._name(dedupe_key_of_erased(k.erased_id)) for k in keys]
        if not names:
            return 0
        try:
            marked: Any = self._erase(keys=names, args=[])
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
        return int(marked)

    def forget_keys(self, namespace: str, keys: Sequence[tuple[str, str]]) -> int:
        secret = self._secret()
        names = [self._name(dedupe_key(secret, namespace, src, id_)) for src, id_ in keys]
        if not names:
            return 0
        try:
            gone: Any = self._r.delete(*names)
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
        return int(gone)

    def prune(self) -> int:
        """Drop what left the window now (Redis also expires keys by itself a little later)."""
        if self._window_us is None:
            return 0
        floor, dropped = self._now_us() - self._window_us, 0
        try:
            for name in self._r.scan_iter(match=self._prefix + "dk:*", count=1000):
                at: Any = self._r.hget(name, "a")
                if at is not None and int(at) < floor:
                    gone: Any = self._r.delete(name)
                    dropped += int(gone)
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
        return dropped

    def check_format(self) -> None:
        """Refuse (``ConfigError``) a store an older version wrote plaintext keys to and that was
        not converted (``adapters.redis.dedupe_upgrade``): claims here would not see them. A
        store without such keys is marked keyed (one scan of the prefix, while not marked)."""
        marker = self._prefix + "dd-format"
        try:
            if self._r.get(marker) in (FORMAT, FORMAT.encode()):
                return
            old = next(iter(self._r.scan_iter(match=self._prefix + "dd:*", count=1000)), None)
            if old is None:
                self._r.set(marker, FORMAT)
                return
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
        raise ConfigError(
            f"the Redis dedupe store (key prefix {self._prefix!r}) holds keys in the plaintext form of an older"
            " meterline: stop every API node and sink worker of the older version, then run"
            " `meterline upgrade-dedupe` once (docs/scale.md, 'Upgrading the dedupe store')"
        )

    def _names(self, secret: bytes, keys: Sequence[EventKey]) -> list[str]:
        return [self._name(dedupe_key(secret, k.namespace, k.source, k.id)) for k in keys]

    def _name(self, key: bytes) -> str:
        return f"{self._prefix}dk:{key.hex()}"

    def _call(self, script: Any, keys: list[str], argv: list[Any]) -> list[Any]:
        if not keys:
            return []
        try:
            result: list[Any] = script(keys=keys, args=argv)
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
        return result
