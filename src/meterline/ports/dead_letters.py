"""The dead-letter store: every rejected event with its raw body, reason and time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from meterline.domain.events.model import Candidate, Outcome


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    namespace: str
    received_us: int
    reason: str
    message: str
    source: str | None
    event_id: str | None
    raw: bytes
    resubmitted_us: int | None = None
    """When it was re-submitted (it stays, marked), None while it waits."""
    resubmitted_status: str | None = None
    """What ingest made of it then: accepted, duplicate, rejected (a new dead letter) or quarantined."""


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Each field set narrows the match; ``[start_us, end_us)`` is on the receive time."""

    reason: str | None = None
    source: str | None = None
    start_us: int | None = None
    end_us: int | None = None
    ids: tuple[int, ...] = ()
    """When not empty: only these dead letters."""
    resubmitted: bool | None = False
    """False (default): only those not re-submitted; True: only re-submitted ones; None: all."""


class DeadLetterStore(Protocol):
    def list(self, namespace: str, f: DeadLetterFilter, *, limit: int, after_id: int = 0) -> list[DeadLetter]:
        """Matching dead letters with ``id > after_id``, oldest first, at most ``limit``."""
        ...

    def purge(self, namespace: str, f: DeadLetterFilter) -> int:
        """Delete the matching ones; how many were deleted."""
        ...

    def count(self) -> int:
        """All dead letters of every namespace."""
        ...


@dataclass(frozen=True, slots=True)
class Rejected:
    """One rejected event as the ack path hands it to the store."""

    reason: str
    message: str
    source: str | None
    event_id: str | None
    raw: bytes


class DeadLetterWriter(Protocol):
    def add(self, namespace: str, received_us: int, letters: Sequence[Rejected]) -> None:
        """Store a request's rejected events durably (one transaction) before it is answered."""
        ...


@dataclass(frozen=True, slots=True)
class Resubmitted:
    """One re-submission: the ingest outcome of each dead letter re-submitted now (by id), the
    ids re-submitted before (left alone), and the ledger position that covers it."""

    outcomes: list[tuple[int, Outcome]]
    already: tuple[int, ...]
    position: int


class Resubmitter(Protocol):
    def resubmit(
        self, namespace: str, ids: tuple[int, ...], decode: Callable[[int, bytes], Candidate], actor: str
    ) -> Resubmitted:
        """Exactly once (the embedded store in one transaction, PostgreSQL under a lease): the
        chosen dead letters of ``namespace`` not re-submitted yet go through ingest again
        (``decode`` makes each raw event a candidate, by its index) and are marked
        re-submitted with their outcome. A second or concurrent call for the same
        ids finds them marked: each dead letter is re-submitted exactly once."""
        ...
