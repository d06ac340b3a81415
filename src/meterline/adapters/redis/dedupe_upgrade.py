"""The Redis dedupe store of an older version converted to keyed names (``meterline
upgrade-dedupe``), as PostgreSQL's migration 18 converts ``dedupe_keys``.

An older version named each key's hash ``<prefix>dd:<len>:<namespace><len>:<source><id>`` and
kept the plain payload digest; an erased key was named by its erased id under the source ``""``,
its digest keyed. Each is moved to ``<prefix>dk:<dedupe_key>`` (``adapters.redis.dedupe``): an
erased one under the first 128 bits of its erased id, marked erased; any other under its keyed
name with its keyed digest; state, token, time and TTL kept. When two land on one name (an
erased key and a later claim of the key, made once the erased one left the window) the later
time is kept, the one a claim answers from. Each batch is one script: a hash that changed since
it was read is left to the next pass, and passes repeat until none is left. Then the store is
marked keyed (``<prefix>dd-format``) and nodes of this version start on it.

Run it with every node of the older version stopped: an older node still running claims keys
under their plaintext names, which this version no longer reads, so an event sent to both could
be counted twice. Nodes of this version refuse to start until it is done (``check_format``).
"""

from __future__ import annotations

from typing import Any

import redis

from meterline.adapters.redis.dedupe import FORMAT
from meterline.domain.erasure import ERASED_SOURCE, dedupe_digest, dedupe_key, dedupe_key_of_erased
from meterline.domain.errors import StorageUnavailable

BATCH = 500
PASSES = 5
# KEYS: pairs (old name, new name); ARGV per pair: state, token, digest, time, erased ('1' or
# '0') as read. Moves each old hash whose token and time are still as read; how many it moved.
_MOVE = """
local n = 0
for i = 1, #KEYS / 2 do
  local old, new, j = KEYS[2 * i - 1], KEYS[2 * i], 5 * (i - 1)
  local row = redis.call('HMGET', old, 't', 'a')
  if row[1] == ARGV[j + 2] and row[2] == ARGV[j + 4] then
    local ttl = redis.call('PTTL', old)
    local held = redis.call('HGET', new, 'a')
    if held == false or tonumber(held) < tonumber(ARGV[j + 4]) then
      redis.call('DEL', new)
      redis.call('HSET', new, 's', ARGV[j + 1], 't', ARGV[j + 2], 'd', ARGV[j + 3], 'a', ARGV[j + 4])
      if ARGV[j + 5] == '1' then redis.call('HSET', new, 'e', '1') end
      if ttl > 0 then redis.call('PEXPIRE', new, ttl) end
    end
    redis.call('DEL', old)
    n = n + 1
  end
end
return n
"""


def upgrade(client: redis.Redis, prefix: str, secret: bytes) -> int:
    """Convert every plaintext key under ``prefix`` (the module's steps); how many were moved."""
    move = client.register_script(_MOVE)
    moved = 0
    try:
        for _ in range(PASSES):
            found = client.scan_iter(match=prefix + "dd:*", count=1000)
            names = [n.decode() if isinstance(n, bytes) else n for n in found]
            if not names:
                client.set(prefix + "dd-format", FORMAT)
                return moved
            for i in range(0, len(names), BATCH):
                moved += _move(client, move, prefix, secret, names[i : i + BATCH])
    except redis.RedisError as exc:
        raise StorageUnavailable("the Redis dedupe store is unavailable") from exc
    raise StorageUnavailable(
        "plaintext dedupe keys kept changing while they were converted: is a node of the older version still running?"
    )


def _move(client: redis.Redis, move: Any, prefix: str, secret: bytes, names: list[str]) -> int:
    keys: list[str] = []
    argv: list[Any] = []
    for old in names:
        state, token, digest, at = client.hmget(old, ["s", "t", "d", "a"])  # type: ignore[misc]
        if state is None or token is None or digest is None or at is None:
            continue  # gone (expired) since the scan
        namespace, source, id_ = _parse(old[len(prefix) + 3 :])
        if source == ERASED_SOURCE:
            keys += [old, f"{prefix}dk:{dedupe_key_of_erased(id_).hex()}"]
            argv += [state, token, digest, at, "1"]
        else:
            keys += [old, f"{prefix}dk:{dedupe_key(secret, namespace, source, id_).hex()}"]
            argv += [state, token, dedupe_digest(secret, bytes(digest)), at, "0"]
    if not keys:
        return 0
    return int(move(keys=keys, args=argv))


def _parse(rest: str) -> tuple[str, str, str]:
    """``<len>:<namespace><len>:<source><id>`` (lengths in characters) as its three parts."""
    size, rest = rest.split(":", 1)
    namespace, rest = rest[: int(size)], rest[int(size) :]
    size, rest = rest.split(":", 1)
    return namespace, rest[: int(size)], rest[int(size) :]
