"""The dead-letter store: every rejected event with its raw body, reason and time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


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


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Each field set narrows the match; ``[start_us, end_us)`` is on the receive time."""

    reason: str | None = None
    source: str | None = None
    start_us: int | None = None
    end_us: int | None = None
    ids: tuple[int, ...] = ()
    """When not empty: only these dead letters."""


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
