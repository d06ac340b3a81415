"""Live usage counters in Redis (``ports.live_usage``).

One hash per (meter, subject) holds the usage per bucket (``m<minute>``, ``h<hour>``,
``d<day>``, as exact decimal strings), one hash per stream the position of each meter. An
``add`` is an optimistic transaction: ``WATCH`` the stream's positions and the counters it
touches, read them, check the positions are the ones the caller read, sum in Python with
``Decimal`` (exact, where Redis's own float increments are not), then ``MULTI``/``EXEC`` the
new values and positions. Two writers of one stream (a rebalance) cannot both succeed: the
second's ``EXEC`` fails on the watched keys, it reads again and finds the positions moved.

Redis keeps no history: a server that loses these keys (restart without persistence) simply
has no positions, and the sink workers rebuild the counters from their streams' raw events
(``services.counter_feed``); reads fall back to the usage store meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, cast

import redis

from meterline.domain.decimals import EXACT
from meterline.domain.errors import StorageUnavailable
from meterline.domain.meters.minutes import buckets, cover
from meterline.ports.live_usage import Deltas

ZERO = Decimal(0)
RETRIES = 20


class RedisUsageCounters:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        """``prefix``: of every key (the deployment's ``[redis] key_prefix`` and its topic)."""
        self._r = client
        self._prefix = prefix

    def positions(self, stream: str, meters: Sequence[int]) -> dict[int, int | None]:
        if not meters:
            return {}
        try:
            found = cast(list[Any], self._r.hmget(self._positions(stream), [str(m) for m in meters]))
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis usage counters are unavailable") from exc
        return {m: None if v is None else int(v) for m, v in zip(meters, found, strict=True)}

    def held(self, streams: Sequence[str], meter: int) -> dict[str, int | None]:
        try:
            with self._r.pipeline(transaction=False) as pipe:
                for s in streams:
                    pipe.hget(self._positions(s), str(meter))
                found = pipe.execute()
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis usage counters are unavailable") from exc
        return {s: None if v is None else int(v) for s, v in zip(streams, found, strict=True)}

    def add(self, stream: str, moves: Mapping[int, tuple[int | None, int]], deltas: Deltas) -> bool:
        wanted = {k: v for k, v in deltas.items() if k[0] in moves}
        try:
            for _ in range(RETRIES):
                done = self._try_add(stream, moves, wanted)
                if done is not None:
                    return done
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis usage counters are unavailable") from exc
        raise StorageUnavailable("the Redis usage counters are contended; retry")

    def _try_add(self, stream: str, moves: Mapping[int, tuple[int | None, int]], deltas: Deltas) -> bool | None:
        """One optimistic attempt: the answer, or None when a watched key changed meanwhile."""
        positions = self._positions(stream)
        keys = {pair: self._counts(*pair) for pair in deltas}
        with self._r.pipeline() as pipe:
            try:
                pipe.watch(positions, *keys.values())  # type: ignore[no-untyped-call]
                names = list(moves)
                found = cast(list[Any], pipe.hmget(positions, [str(m) for m in names])) if names else []
                current = {m: None if v is None else int(v) for m, v in zip(names, found, strict=True)}
                if any(current[m] != at for m, (at, _) in moves.items()):
                    return False
                updates = {pair: self._summed(pipe, keys[pair], minutes) for pair, minutes in deltas.items()}
                pipe.multi()
                for pair, values in updates.items():
                    if values:
                        pipe.hset(keys[pair], mapping=values)
                pipe.hset(positions, mapping={str(m): end for m, (_, end) in moves.items()})
                pipe.execute()
                return True
            except redis.WatchError:
                return None

    @staticmethod
    def _summed(pipe: redis.client.Pipeline, key: str, minutes: Mapping[int, Decimal]) -> dict[str, str]:
        """The new value of every bucket the minutes add to (read in the watched pipeline)."""
        adds: dict[str, Decimal] = {}
        for minute, value in minutes.items():
            for b in buckets(minute):
                adds[b] = EXACT.add(adds.get(b, ZERO), value)
        names = list(adds)
        old = cast(list[Any], pipe.hmget(key, names))
        return {
            n: str(EXACT.add(ZERO if o is None else Decimal(o.decode()), adds[n]))
            for n, o in zip(names, old, strict=True)
        }

    def total(self, meter: int, subjects: Sequence[str], start_minute: int, end_minute: int) -> Decimal:
        fields = cover(start_minute, end_minute)
        if not fields or not subjects:
            return ZERO
        try:
            with self._r.pipeline(transaction=False) as pipe:
                for subject in subjects:
                    pipe.hmget(self._counts(meter, subject), fields)
                found = cast(list[list[Any]], pipe.execute())
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis usage counters are unavailable") from exc
        total = ZERO
        for values in found:
            for v in values:
                if v is not None:
                    total = EXACT.add(total, Decimal(v.decode()))
        return total

    def move_subject(self, meters: Sequence[int], subject: str, alias: str) -> int:
        """Per meter an optimistic transaction as ``add``'s: ``WATCH`` both hashes, sum exactly
        in Python, ``MULTI``/``EXEC`` the pseudonym's new values and the subject's deletion."""
        moved = 0
        try:
            for meter in meters:
                moved += self._move(self._counts(meter, subject), self._counts(meter, alias))
        except redis.RedisError as exc:
            raise StorageUnavailable("the Redis usage counters are unavailable") from exc
        return moved

    def _move(self, source: str, target: str) -> int:
        for _ in range(RETRIES):
            with self._r.pipeline() as pipe:
                try:
                    pipe.watch(source, target)  # type: ignore[no-untyped-call]
                    old = cast(dict[bytes, bytes], pipe.hgetall(source))
                    if not old:
                        return 0
                    into = cast(dict[bytes, bytes], pipe.hgetall(target))
                    new = {
                        k.decode(): str(EXACT.add(Decimal(v.decode()), Decimal(into.get(k, b"0").decode())))
                        for k, v in old.items()
                    }
                    pipe.multi()
                    pipe.hset(target, mapping=new)
                    pipe.delete(source)
                    pipe.execute()
                    return 1
                except redis.WatchError:
                    continue
        raise StorageUnavailable("the Redis usage counters stayed contended")

    def _positions(self, stream: str) -> str:
        return f"{self._prefix}lu:pos:{stream}"

    def _counts(self, meter: int, subject: str) -> str:
        return f"{self._prefix}lu:{meter}:{len(subject)}:{subject}"
