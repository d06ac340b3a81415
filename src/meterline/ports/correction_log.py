"""What corrections need where the ledger is a partitioned log (scale mode): the original as
the sink workers stored it, a writer that appends a correction entry to the original's
partition, and the journal of acknowledged corrections that serializes them per key.

A correction entry supersedes one *version* of its key (the original or an earlier amend) in
the same partition; ``seq`` is an entry's place in that partition (offset + 1). See
``services.log_corrections`` for the protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meterline.domain.events.corrections import Action
from meterline.domain.events.model import Event

__all__ = ["CorrectionJournal", "CorrectionWriter", "Journaled", "KeptHours", "StoredOriginal", "StoredOriginals"]


@dataclass(frozen=True, slots=True)
class StoredOriginal:
    """An accepted event as the raw store holds it: its partition ``stream`` and ``seq`` there."""

    stream: str
    seq: int
    type: str
    subject: str
    time_us: int
    received_us: int
    raw: bytes


class StoredOriginals(Protocol):
    def original(self, namespace: str, source: str, event_id: str) -> StoredOriginal | None:
        """The newest stored original (not a correction entry) of the key; None when none."""
        ...


class KeptHours(Protocol):
    """The raw events of corrected hours, kept while the raw store's retention removes others."""

    def horizon_us(self) -> int | None:
        """Hours that start at or before this may have lost raw events to retention (None:
        raw events are kept forever)."""
        ...

    def keep(self, namespace: str, places: list[tuple[str, int]]) -> None:
        """Keep, from now on, every raw event of the (subject, UTC hour) of each (subject,
        time in µs) of ``places``: those stored, and those stored later."""
        ...


@dataclass(frozen=True, slots=True)
class Journaled:
    """One acknowledged correction of the original at (``stream``, ``original``)."""

    namespace: str
    source: str
    event_id: str
    stream: str
    original: int
    seq: int
    """Its own place in ``stream``."""
    target: int
    """The seq of the version it supersedes."""
    action: Action
    reason: str
    actor: str
    received_us: int
    type: str
    subject: str
    time_us: int
    raw: bytes | None
    """The new version (an amend); None for a void (``type``, ``subject``, ``time_us`` are then
    the voided version's)."""
    was_type: str
    was_subject: str
    was_time_us: int
    number: int = 0
    """The journal's own number for it (unique over every partition; 0 before it is stored)."""


class CorrectionJournal(Protocol):
    def append(
        self,
        namespace: str,
        source: str,
        event_id: str,
        stream: str,
        original: int,
        write: Callable[[list[Journaled]], Journaled],
    ) -> Journaled:
        """Holding the key against every other ``append`` (any process), read the original's
        acknowledged corrections in order, call ``write`` with them (it checks them, writes the
        entry to the log and answers what it wrote, or raises: nothing is stored), store what it
        answered and return it, numbered."""
        ...

    def chain(self, namespace: str, source: str, event_id: str, stream: str, original: int) -> list[Journaled]:
        """The original's acknowledged corrections, in log order."""
        ...

    def since(self, namespace: str, received_from_us: int, limit: int) -> list[Journaled]:
        """Corrections received at or after ``received_from_us``, oldest first."""
        ...

    def every(self, after: int, limit: int) -> list[Journaled]:
        """Up to ``limit`` corrections of every namespace numbered after ``after``, by number
        (what ``verify`` checks against the log's chained entries)."""
        ...


class CorrectionWriter(Protocol):
    def write_correction(
        self, stream: str, event: Event, received_us: int, corrects: int, *, amend: bool, record: bytes = b""
    ) -> int:
        """Append a correction entry superseding ``corrects`` to ``stream`` (the original's
        partition, so it follows the original), durably (``acks=all``); its seq there. An
        amend's ``event`` first passes the live meters' checks (``amend_unreadable``)."""
        ...
