"""What health checks and metrics read of a store: whether it can be read and written, how
busy its write path is, and which in-memory views of it are stale."""

from __future__ import annotations

from typing import Protocol


class StoreStatus(Protocol):
    def probe(self) -> None:
        """One read round trip; raises when the store cannot be read."""
        ...

    def writable(self) -> tuple[bool, str | None]:
        """False (and why) from a failed commit until one succeeds again."""
        ...

    def commits(self) -> int:
        """Write transactions committed since start."""
        ...

    def queued(self) -> int:
        """Writes waiting to be applied."""
        ...

    def ledger_events(self) -> int:
        """Events in the ledger."""
        ...

    def pending_backfill(self) -> int:
        """Ledger events not yet applied to a new meter."""
        ...

    def stale_views(self) -> list[str]:
        """In-memory views of committed writes that missed a change and are being rebuilt."""
        ...

    def followup_failures(self) -> int:
        """Follow-ups of committed writes that failed since start (their view was rebuilt)."""
        ...
