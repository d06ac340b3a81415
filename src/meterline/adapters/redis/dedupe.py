"""The dedupe store in Redis (``ports.dedupe.DedupeStore``): one hash per idempotency key,
every call one Lua script, so each runs alone on the server (the same steps as the PostgreSQL
store, see its module and docs/scale.md). Keys carry a TTL of the window plus the lease, so Redis
forgets them by itself; the window itself is checked against the caller's clock in the script.

Durability is Redis's: without ``appendonly yes`` and ``appendfsync always`` a server restart
forgets confirmed keys, and a retry after it is accepted again (counted twice). That is why
PostgreSQL is the default (docs/scale.md has the measurement).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis

from meterline.domain.errors import StorageUnavailable
from meterline.ports.dedupe import Claims, EventKey, Verdict

# KEYS: the keys; ARGV: token, now, floor (confirmed before it: out of the window), lease end,
# ttl ms, then one digest per key. Returns one code per key: 0 claimed, 1 duplicate,
# 2 conflict, 3 busy.
_CLAIM = """
local token, now, floor, lease, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local out = {}
for i, k in ipairs(KEYS) do
  local digest = ARGV[5 + i]
  local row = redis.call('HMGET', k, 's', 't', 'd', 'a')
  local lapsed = row[1] == false
    or (row[1] == 'p' and tonumber(row[4]) <= now)
    or (row[1] == 'c' and tonumber(row[4]) < floor)
  if lapsed then
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
_CODES = [Verdict.CLAIMED, Verdict.DUPLICATE, Verdict.CONFLICT, Verdict.BUSY]
FOREVER_MS = 10 * 365 * 86400 * 1000


class RedisDedupe:
    def __init__(
        self,
        client: redis.Redis,
        now_us: Callable[[], int],
        *,
        lease_us: int,
        window_us: int | None = None,
        prefix: str = "meterline:",
    ) -> None:
        self._r = client
        self._now_us = now_us
        self._lease_us = lease_us
        self._window_us = window_us
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._confirm = client.register_script(_CONFIRM)
        self._release = client.register_script(_RELEASE)
        span_us = FOREVER_MS * 1000 if window_us is None else window_us + lease_us
        self._ttl_ms = span_us // 1000 + 60_000

    def claim(self, keys: Sequence[EventKey]) -> Claims:
        token = uuid.uuid4().hex
        now = self._now_us()
        floor = -(2**62) if self._window_us is None else now - self._window_us
        argv: list[Any] = [token, now, floor, now + self._lease_us, self._ttl_ms, *(k.digest for k in keys)]
        codes = self._call(self._claim, [self._key(k) for k in keys], argv)
        return Claims(token, [_CODES[int(c)] for c in codes])

    def confirm(self, token: str, keys: Sequence[EventKey]) -> list[bool]:
        codes = self._call(self._confirm, [self._key(k) for k in keys], [token, self._now_us(), self._ttl_ms])
        return [bool(int(c)) for c in codes]

    def release(self, token: str, keys: Sequence[EventKey]) -> None:
        self._call(self._release, [self._key(k) for k in keys], [token])

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
