"""The ledger: the durable, deduplicated, append-only record of accepted events.

``append`` is the whole ack path: a request's validated candidates go in, one outcome per
event comes out (accepted / duplicate, with ``conflict`` when the payload differs / rejected /
quarantined) once they are durable, together with the ledger position of that commit. The
aggregator reads entries after its offset in sequence order; a position is the sequence
number of the last committed entry (0 for an empty ledger).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from meterline.domain.events.model import Candidate, Outcome
from meterline.domain.meters.fold import LedgerEntry

__all__ = ["Appended", "EventFilter", "Ledger", "LedgerEntry", "LedgerReader", "StoredEvent"]


class Appended(list[Outcome]):
    """The outcomes of one append, in request order, and ``position``: the ledger position
    that covers every event of it (a reader that waits for it reads this request's writes)."""

    position: int

    def __init__(self, outcomes: Sequence[Outcome], position: int) -> None:
        super().__init__(outcomes)
        self.position = position


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    namespace: str
    raw: bytes
    received_us: int
    cursor: str = ""
    """Where a newest-first list continues after this event (``EventFilter.after``); empty
    where ``seq`` says it (``before_seq``)."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    subject: str | None = None
    event_id: str | None = None
    start_us: int | None = None
    end_us: int | None = None
    received_from_us: int | None = None
    received_to_us: int | None = None
    source: str | None = None
    """Exact source."""
    type: str | None = None
    """Exact event type."""
    before_seq: int | None = None
    """Only entries with ``seq`` below this (the next page of a newest-first list)."""
    after: str | None = None
    """Only entries listed after the one whose ``StoredEvent.cursor`` this is (the next page of
    a newest-first list where there is no single sequence: scale mode). A ledger whose entries
    carry no cursor refuses it (``InvalidInput`` ``invalid_cursor``)."""
    from_seq: int | None = None
    """Only entries with ``seq`` at or above this: with ``before_seq``, a bounded window of the
    ledger to look through (the dashboard's explorer pages a filter that matches few events
    this way, so no page reads more than one window)."""


class Ledger(Protocol):
    def append(self, namespace: str, candidates: Sequence[Candidate]) -> Future[list[Outcome]]:
        """Record a request's events; the future resolves (with an :class:`Appended`) after
        the commit that holds them."""
        ...

    def read(self, after: int, limit: int) -> list[LedgerEntry]:
        """Up to ``limit`` entries with ``seq > after``, in sequence order."""
        ...

    def position(self) -> int:
        """The position of the last committed entry."""
        ...

    def list(self, namespace: str, f: EventFilter, *, limit: int) -> list[StoredEvent]:
        """Newest first (GET /events)."""
        ...


class LedgerReader(Protocol):
    """A ledger read in sequence order and nothing else (the source of a migration)."""

    def read(self, after: int, limit: int) -> list[LedgerEntry]:
        """Up to ``limit`` entries with ``seq > after``, in sequence order."""
        ...

    def position(self) -> int:
        """The position of the last committed entry."""
        ...
