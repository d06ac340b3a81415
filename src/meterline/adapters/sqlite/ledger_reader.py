"""A data directory's ledger read through a read-only connection
(:class:`~meterline.ports.ledger.LedgerReader`): safe beside a server running on it, which
keeps writing; a reader sees each commit whole or not at all (WAL snapshots)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from meterline.adapters.sqlite.database import DB_FILE
from meterline.adapters.sqlite.replay import ENTRIES
from meterline.adapters.sqlite.schema import connect
from meterline.domain.errors import ConfigError, StorageUnavailable
from meterline.ports.ledger import LedgerEntry


class SqliteLedgerReader:
    def __init__(self, data_dir: Path) -> None:
        path = data_dir / DB_FILE
        if not path.is_file():
            raise ConfigError(f"no meterline store in {data_dir} (no {DB_FILE}): check --data-dir / storage.data_dir")
        try:
            self._conn = connect(path, readonly=True)
            self._conn.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StorageUnavailable(f"cannot read the ledger in {data_dir}: {exc}") from exc

    def read(self, after: int, limit: int) -> list[LedgerEntry]:
        rows = self._conn.execute(f"{ENTRIES} WHERE e.seq > ? ORDER BY e.seq LIMIT ?", (after, limit))
        return [LedgerEntry(*row) for row in rows]

    def position(self) -> int:
        return int(self._conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])

    def close(self) -> None:
        self._conn.close()
