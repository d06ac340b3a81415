"""A pooled PostgreSQL database: one transaction per ``tx()`` block, backend errors translated.

Every adapter here runs each port call as one transaction on a pooled connection (READ
COMMITTED). Uniqueness rules are the database's (unique indexes, a violation becomes the port's
``Conflict``); a read-then-write rule takes a transaction-scoped advisory lock on what it reads
(``lock``), so two API nodes never both pass a check that only one write may pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool
from psycopg.rows import TupleRow

from meterline.adapters.postgres.migrations import migrate
from meterline.domain.errors import StorageUnavailable

Connection = psycopg.Connection[TupleRow]


class PgDatabase:
    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 10.0) -> None:
        """Open the pool (``dsn``: a libpq connection string or URI) and apply the migrations
        this version has that the database has not."""
        self._pool: psycopg_pool.ConnectionPool[Connection] = psycopg_pool.ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            # a connection is checked as it leaves the pool (one round trip), so one that the server
            # closed (a restart, a failover, an idle timeout) is replaced instead of failing a call
            check=psycopg_pool.ConnectionPool.check_connection,
        )
        try:
            try:
                self._pool.open(wait=True, timeout=timeout)
            except psycopg_pool.PoolTimeout as exc:
                raise StorageUnavailable("the PostgreSQL database cannot be reached") from exc
            with self.tx() as conn:
                migrate(conn)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
            raise StorageUnavailable("the PostgreSQL database is unavailable") from exc

    def close(self) -> None:
        self._pool.close()


def lock(conn: Connection, *parts: str) -> None:
    """Serialise the transactions that name the same ``parts`` until they end (an advisory
    transaction lock on a 64-bit digest of them)."""
    digest = int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(), "big", signed=True)
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (digest,))


def is_unique_violation(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.errors.UniqueViolation)
