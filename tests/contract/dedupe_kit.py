"""Dedupe stores of each kind for the contract suite and the race tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis_server
from postgres_server import fresh_schema, server

from meterline.adapters.memory.dedupe import MemoryDedupe
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.dedupe import PgDedupe
from meterline.adapters.postgres.erasure import PgErasureCatalog
from meterline.adapters.redis.dedupe import RedisDedupe
from meterline.ports.dedupe import EventKey

KINDS = ["memory", "postgres", "redis"]
LEASE_US = 30_000_000


def key(id_: str, digest: bytes = b"d1", namespace: str = "default", source: str = "src") -> EventKey:
    return EventKey(namespace, source, id_, digest)


@contextmanager
def redis_prefix() -> Iterator[tuple[redis.Redis, str]]:
    """A client of the test Redis and a key prefix of the caller's own, whose keys are deleted
    afterwards."""
    prefix = f"meterline-test:{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(redis_server.server())
    try:
        yield client, prefix
    finally:
        for name in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(name)
        client.close()


@contextmanager
def opened(kind: str, now_us: Callable[[], int], *, window_us: int | None = None) -> Iterator[Any]:
    """A fresh store of ``kind``, and a factory of further stores on the same data (as other API
    nodes see it): ``(store, another)``."""
    if kind == "memory":
        store = MemoryDedupe(now_us, lease_us=LEASE_US, window_us=window_us)
        yield store, lambda clock=now_us: store
        return
    if kind == "redis":
        with redis_prefix() as (client, prefix):
            secret = uuid.uuid4().bytes

            def node(clock: Callable[[], int] = now_us) -> RedisDedupe:
                return RedisDedupe(
                    client, clock, lease_us=LEASE_US, window_us=window_us, prefix=prefix, secret=lambda: secret
                )

            yield node(), node
        return
    with fresh_schema(server()) as dsn:
        dbs: list[PgDatabase] = []

        def another(clock: Callable[[], int] = now_us) -> PgDedupe:
            db = PgDatabase(dsn, max_size=4)
            dbs.append(db)
            return PgDedupe(
                db, clock, lease_us=LEASE_US, window_us=window_us, secret=PgErasureCatalog(db, clock).secret
            )

        try:
            yield another(), another
        finally:
            for db in dbs:
                db.close()


def pg_dsn_store(dsn: str, now_us: Callable[[], int], lease_us: int = LEASE_US) -> PgDedupe:
    db = PgDatabase(dsn, max_size=2)
    return PgDedupe(db, now_us, lease_us=lease_us, secret=PgErasureCatalog(db, now_us).secret)
