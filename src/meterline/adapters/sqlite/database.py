"""One SQLite database file: its writer thread and per-thread read connections."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from meterline.adapters.sqlite.schema import connect, create_schema
from meterline.adapters.sqlite.writer import Writer
from meterline.runtime.background import Monitor

DB_FILE = "meterline.db"


class Database:
    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: str = "full",
        max_batch: int = 256,
        max_weight: int = 100_000,
        max_queue: int = 4096,
        monitor: Monitor | None = None,
        on_rollback: Callable[[bool], None] | None = None,
        before_commit: Callable[[sqlite3.Connection], None] | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_FILE
        self._fsync = fsync
        self.monitor = monitor or Monitor()
        """The background loops working on this database (the writer, the aggregator)."""
        conn = connect(self.path, fsync=fsync)
        create_schema(conn)
        self.writer = Writer(
            conn,
            reconnect=lambda: connect(self.path, fsync=fsync),
            max_batch=max_batch,
            max_weight=max_weight,
            max_queue=max_queue,
            monitor=self.monitor,
            on_rollback=on_rollback,
            before_commit=before_commit,
            after_commit=after_commit,
        )
        self.fresh: Callable[[], None] = lambda: None
        """Called before a usage read: waits (bounded) until the aggregator has applied the
        ledger position current now, so a caller reads its own writes (set by bootstrap)."""
        self.fresh_check: Callable[[], None] = lambda: None
        """The same barrier for entitlement checks, which may accept a bounded staleness."""
        self.settled: Callable[[Callable[[], bool]], bool] = lambda done: done()
        """Waits (bounded) until ``done()``, checked as the aggregator applies backfill
        chunks; answers it (set by bootstrap)."""
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (autocommit: every statement sees the latest commit)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, fsync=self._fsync, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        self.writer.close()
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
