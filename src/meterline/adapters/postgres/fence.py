"""The sink workers' fence in PostgreSQL (``ports.sink.StreamFence``): one row per log
partition with its newest epoch, and the maintenance hold ``meterline rebuild`` takes.

- ``acquire`` takes the maintenance lock *shared* for its transaction (refused, None, while a
  rebuild holds it exclusively) and raises the stream's epoch by one; the row lock orders it
  against every other ``acquire`` and ``holds`` of the stream.
- ``holds`` reads the stream's epoch: a committed ``acquire`` of another worker is seen by
  every check that starts after it.
- ``maintenance`` holds the lock exclusively on a connection of its own (released when the
  block ends, or by the server when the process dies) and raises every stream's epoch, so the
  workers' next fence checks fail and no worker takes a stream until it is released.
- an unfinished erasure (``adapters.postgres.erasure``: a row of ``erasures`` with a subject
  and no finish) holds the workers too, durably: ``acquire`` refuses while one exists, so a
  process that dies in the middle of an erasure leaves the usage store as it was until a run
  that finishes the erasure (``services.log_erasure``, ``resume``) ends it;
- ``erasures`` tells the API nodes' usage reads whether an erasure is unfinished or began
  since they last looked (``services.log_erasure.ErasureGate``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from meterline.adapters.postgres.database import Connection, PgDatabase
from meterline.domain.errors import StorageUnavailable

_LOCK = "%s, hashtext(current_schema())"
"""The maintenance lock: a constant and the schema's name (several deployments may share a database)."""
_CLASS = 0x6D66_656E  # "mfen"


class PgFence:
    def __init__(self, db: PgDatabase, dsn: str) -> None:
        self._db = db
        self._dsn = dsn

    def acquire(self, stream: str) -> int | None:
        with self._db.tx() as conn:
            free = conn.execute(f"SELECT pg_try_advisory_xact_lock_shared({_LOCK})", (_CLASS,)).fetchone()
            if not (free and free[0]):
                return None
            if _erasing(conn):
                return None
            row = conn.execute(
                "INSERT INTO sink_fences (stream, epoch) VALUES (%s, 1)"
                " ON CONFLICT (stream) DO UPDATE SET epoch = sink_fences.epoch + 1 RETURNING epoch",
                (stream,),
            ).fetchone()
            assert row is not None
            return int(row[0])

    def erasing(self) -> bool:
        """Whether an unfinished erasure holds the workers."""
        with self._db.tx() as conn:
            return _erasing(conn)

    def erasures(self) -> tuple[int, bool]:
        """The newest erasure's id (0: none yet) and whether an erasure is unfinished: equal
        answers before and after a read, and none unfinished, tell that no erasure moved rows
        meanwhile (``services.log_erasure.ErasureGate``)."""
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT (SELECT coalesce(max(id), 0) FROM erasures),"
                " EXISTS (SELECT 1 FROM erasures WHERE finished_us IS NULL AND subject IS NOT NULL)"
            ).fetchone()
        assert row is not None
        return int(row[0]), bool(row[1])

    def holds(self, stream: str, epoch: int) -> bool:
        with self._db.tx() as conn:
            row = conn.execute("SELECT epoch FROM sink_fences WHERE stream = %s", (stream,)).fetchone()
            return row is not None and int(row[0]) == epoch

    @contextmanager
    def maintenance(self, wait: bool = True) -> Iterator[bool]:
        """Hold every stream for the block: True once held; False at once when another
        maintenance holds it and ``wait`` is false."""
        try:
            conn = psycopg.connect(self._dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StorageUnavailable("the PostgreSQL database is unavailable") from exc
        with conn:
            if wait:
                conn.execute(f"SELECT pg_advisory_lock({_LOCK})", (_CLASS,))
            else:
                got = conn.execute(f"SELECT pg_try_advisory_lock({_LOCK})", (_CLASS,)).fetchone()
                if not (got and got[0]):
                    yield False
                    return
            try:
                conn.execute("UPDATE sink_fences SET epoch = epoch + 1")  # the workers' epochs end here
                yield True
            finally:
                conn.execute(f"SELECT pg_advisory_unlock({_LOCK})", (_CLASS,))


def _erasing(conn: Connection) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM erasures WHERE finished_us IS NULL AND subject IS NOT NULL)"
    ).fetchone()
    return bool(row and row[0])
