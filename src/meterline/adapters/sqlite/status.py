"""The embedded store's :class:`~meterline.ports.status.StoreStatus`."""

from __future__ import annotations

from meterline.adapters.sqlite.backend import EmbeddedBackend


class SqliteStatus:
    def __init__(self, backend: EmbeddedBackend) -> None:
        self._backend = backend

    def probe(self) -> None:
        self._backend.db.reader().execute("SELECT 1 FROM meta LIMIT 1").fetchone()

    def writable(self) -> tuple[bool, str | None]:
        writer = self._backend.db.writer
        return writer.available, writer.failure

    def commits(self) -> int:
        return self._backend.db.writer.commits

    def queued(self) -> int:
        return self._backend.db.writer.queued()

    def ledger_events(self) -> int:
        return self._backend.ledger.size()

    def pending_backfill(self) -> int:
        return self._backend.meters.pending_backfill()

    def stale_views(self) -> list[str]:
        return self._backend.followups.problems()

    def followup_failures(self) -> int:
        return self._backend.followups.failures
