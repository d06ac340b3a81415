"""Corrections of accepted events (``domain.events.corrections``): appended to the ledger by
the ack path, read back as each key's history.

``correct`` appends the correction entry through the ledger's normal append path (same
transaction rules, dedupe index and ledger position as ingest) and returns once it is
committed; the aggregator then moves rollups, counters and entitlement values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meterline.domain.events.corrections import Action, CorrectionRequest, History

__all__ = ["Corrected", "CorrectionLog", "CorrectionRecord", "Corrections"]


@dataclass(frozen=True, slots=True)
class Corrected:
    """A committed correction: its ledger entry ``seq``, the ``original`` it corrects and the
    ledger ``position`` a reader waits for to see it aggregated."""

    seq: int
    original: int
    action: Action
    position: int
    log_positions: dict[int, int] | None = None
    """Scale mode: the log partition the correction went to and the offset after it (what a
    reader waits for, ``Meterline-Log-Positions``); ``position`` is then its seq there."""


@dataclass(frozen=True, slots=True)
class CorrectionRecord:
    """One correction as listed (billing citations, reconciliation)."""

    seq: int
    original: int
    namespace: str
    action: Action
    reason: str
    actor: str
    received_us: int
    subjects: tuple[str, ...]
    """The subjects of the versions it took back or put in (an amend may move an event)."""
    times_us: tuple[int, ...]
    """The event times of those versions."""
    types: tuple[str, ...]
    """The event types of those versions."""


class CorrectionLog(Protocol):
    def since(self, namespace: str, received_from_us: int, limit: int) -> list[CorrectionRecord]:
        """Corrections received at or after ``received_from_us``, oldest first."""
        ...


class Corrections(CorrectionLog, Protocol):
    def correct(self, request: CorrectionRequest) -> Corrected:
        """Append a void or an amend; raises ``event_not_found``, ``event_voided`` or
        ``amend_unreadable`` (nothing appended)."""
        ...

    def history(self, namespace: str, source: str, event_id: str) -> History:
        """The key's chain; raises ``event_not_found``."""
        ...
