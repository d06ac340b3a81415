"""The dedupe store in Redis (``ports.dedupe.DedupeStore``): one hash per idempotency key,
every call one Lua script, so each runs alone on the server (the same steps as the PostgreSQL
store, see its module and docs/scale.md). Keys carry a TTL of the window plus the lease, so Redis
forgets them by itself; the window itself is checked against the caller's clock in the script.

Durability is Redis's: without ``appendonly yes`` and ``appendfsync always`` a server restart
forgets confirmed keys, and a retry after it is accepted again (counted twice). That is why
PostgreSQL is the default (docs/scale.md has the measurement).

Erased keys, as in the PostgreSQL store (``adapters.postgres.dedupe``): an erasure of a subject
(``erase_keys``) replaces each of its keys' hashes by one under its erased key (source ``""``,
id = HMAC of the key under the erasure secret; the digest a keyed digest; state, token, time and
TTL kept), so no key name or value holds the original id or digest. A claim, given the secret,
claims no key whose erased key is held within the window and answers from that hash: a resent
erased event is DUPLICATE (or CONFLICT, told by the keyed digest), never claimed again. It costs
one HMAC per key and one more ``HMGET`` per key inside the script.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis

from meterline.domain.erasure import ERASED_SOURCE, erased_digest, erased_id
from meterline.domain.errors import StorageUnavailable
from meterline.ports.dedupe import Claims, EventKey, Verdict
from meterline.ports.erasure import ErasedKey

# KEYS: the n keys, then (with the erasure secret) their n erased keys; ARGV: token, now, floor
# (confirmed before it: out of the window), lease end, ttl ms, n, then one digest per key and
# (with the secret) one keyed digest per key. Returns one code per key: 0 claimed,
# 1 duplicate, 2 conflict, 3 busy. An erased key's hash held within the window (whatever its
# state, as the PostgreSQL store's ``NOT EXISTS``) keeps the key from being claimed; the key's
# own hash, if any, then answers, else the erased one (confirmed: by the keyed digest; else busy).
_CLAIM = """
local token, now, floor, lease, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local n = tonumber(ARGV[6])
local out = {}
for i = 1, n do
  local k, digest = KEYS[i], ARGV[6 + i]
  local row = redis.call('HMGET', k, 's', 't', 'd', 'a')
  local erased = false
  if #KEYS > n then
    erased = redis.call('HMGET', KEYS[n + i], 's', 'd', 'a')
    if erased[1] == false or tonumber(erased[3]) < floor then erased = false end
  end
  local lapsed = row[1] == false
    or (row[1] == 'p' and tonumber(row[4]) <= now)
    or (row[1] == 'c' and tonumber(row[4]) < floor)
  if lapsed and not erased then
    redis.call('HSET', k, 's', 'p', 't', token, 'd', digest, 'a', lease)
    redis.call('PEXPIRE', k, ttl)
    out[i] = 0
  elseif row[1] ~= false then
    if row[1] == 'c' or row[2] == token then
      if row[3] == digest then out[i] = 1 else out[i] = 2 end
    else
      out[i] = 3
    end
  elseif erased[1] == 'c' then
    if erased[2] == ARGV[6 + n + i] then out[i] = 1 else out[i] = 2 end
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
  local row = redis.call('HMGET', k, 's', 't')
  if row[2] == ARGV[1] then
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
  local row = redis.call('HMGET', k, 's', 't')
  if row[1] == 'p' and row[2] == ARGV[1] then redis.call('DEL', k) end
end
return 0
"""
# KEYS: pairs of a key and its erased key; ARGV: per pair the key's state, token, digest and
# time as read before, and the keyed digest. A key whose hash is still as read is replaced by
# its erased key's (kept if one is there), its TTL carried over: 1; a key gone: 0; a key whose
# hash changed meanwhile: -1 (read it again).
_ERASE = """
local out = {}
for i = 1, #KEYS / 2 do
  local k, e, j = KEYS[2 * i - 1], KEYS[2 * i], 5 * (i - 1)
  local row = redis.call('HMGET', k, 's', 't', 'd', 'a')
  if row[1] == false then
    out[i] = 0
  elseif row[1] ~= ARGV[j + 1] or row[2] ~= ARGV[j + 2] or row[3] ~= ARGV[j + 3] or row[4] ~= ARGV[j + 4] then
    out[i] = -1
  else
    if redis.call('EXISTS', e) == 0 then
      redis.call('HSET', e, 's', row[1], 't', row[2], 'd', ARGV[j + 5], 'a', row[4])
      local ttl = redis.call('PTTL', k)
      if ttl > 0 then redis.call('PEXPIRE', e, ttl) end
    end
    redis.call('DEL', k)
    out[i] = 1
  end
end
return out
"""
_CODES = [Verdict.CLAIMED, Verdict.DUPLICATE, Verdict.CONFLICT, Verdict.BUSY]
FOREVER_MS = 10 * 365 * 86400 * 1000
ERASE_ATTEMPTS = 5


class RedisDedupe:
    def __init__(
        self,
        client: redis.Redis,
        now_us: Callable[[], int],
        *,
        lease_us: int,
        window_us: int | None = None,
        prefix: str = "meterline:",
        secret: Callable[[], bytes] | None = None,
    ) -> None:
        """``secret``: the erasure secret (erased keys are recognised; None: they are not)."""
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
        argv: list[Any] = [token, now, floor, now + self._lease_us, self._ttl_ms, len(keys), *(k.digest for k in keys)]
        names = [self._key(k) for k in keys]
        if self._secret is not None and keys:
            secret = self._secret()
            names += [self._key(_erased(secret, k)) for k in keys]
            argv += [erased_digest(secret, k.digest) for k in keys]
        codes = self._call(self._claim, names, argv)
        return Claims(token, [_CODES[int(c)] for c in codes])

    def confirm(self, token: str, keys: Sequence[EventKey]) -> list[bool]:
        codes = self._call(self._confirm, [self._key(k) for k in keys], [token, self._now_us(), self._ttl_ms])
        return [bool(int(c)) for c in codes]

    def release(self, token: str, keys: Sequence[EventKey]) -> None:
        self._call(self._release, [self._key(k) for k in keys], [token])

    def confirmed_at(self, namespace: str, source: str, event_id: str) -> int | None:
        floor = -(2**62) if self._window_us is None else self._now_us() - self._window_us
        try:
            state, at = self._r.hmget(self._key(EventKey(namespace, source, event_id, b"")), ["s", "a"])  # type: ignore[misc]
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
        if state not in (b"c", "c") or at is None or int(at) < floor:
            return None
        return int(at)

    def erase_keys(self, namespace: str, keys: Sequence[ErasedKey]) -> int:
        """Each key's hash replaced by its erased key's (``ports.erasure.ErasableKeys``); how
        many were there. Idempotent: a key already replaced is gone."""
        if self._secret is None:
            raise AssertionError("erasing keys needs the erasure secret")
        secret, moved = self._secret(), 0
        pending = [(self._key(EventKey(namespace, k.source, k.id, b"")), self._erased_name(namespace, k)) for k in keys]
        for _ in range(ERASE_ATTEMPTS):
            if not pending:
                return moved
            try:
                rows: list[Any] = [self._r.hmget(name, ["s", "t", "d", "a"]) for name, _ in pending]
            except redis.RedisError as exc:
                raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
            present = [(names, row) for names, row in zip(pending, rows, strict=True) if row[0] is not None]
            argv = [v for _, row in present for v in (*row, erased_digest(secret, row[2] or b""))]
            codes = self._call(self._erase, [n for names, _ in present for n in names], argv)
            moved += sum(1 for c in codes if int(c) == 1)
            pending = [names for (names, _), c in zip(present, codes, strict=True) if int(c) == -1]
        raise StorageUnavailable("the Redis dedupe store's keys kept changing during the erasure; retry")

    def forget_keys(self, namespace: str, keys: Sequence[tuple[str, str]]) -> int:
        names = [self._key(EventKey(namespace, src, id_, b"")) for src, id_ in keys]
        if not names:
            return 0
        try:
            gone: Any = self._r.delete(*names)
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
        return int(gone)

    def _erased_name(self, namespace: str, k: ErasedKey) -> str:
        return self._key(EventKey(namespace, ERASED_SOURCE, k.erased_id, b""))

    def prune(self) -> int:
        """Drop what left the window now (Redis also expires keys by itself a little later)."""
        if self._window_us is None:
            return 0
        floor, dropped = self._now_us() - self._window_us, 0
        try:
            for name in self._r.scan_iter(match=self._prefix + "dd:*", count=1000):
                at: Any = self._r.hget(name, "a")
                if at is not None and int(at) < floor:
                    gone: Any = self._r.delete(name)
                    dropped += int(gone)
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
        return dropped

    def _key(self, k: EventKey) -> str:
        return f"{self._prefix}dd:{len(k.namespace)}:{k.namespace}{len(k.source)}:{k.source}{k.id}"

    def _call(self, script: Any, keys: list[str], argv: list[Any]) -> list[Any]:
        if not keys:
            return []
        try:
            result: list[Any] = script(keys=keys, args=argv)
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
        return result


def _erased(secret: bytes, k: EventKey) -> EventKey:
    return EventKey(k.namespace, ERASED_SOURCE, erased_id(secret, k.namespace, k.source, k.id), b"")
