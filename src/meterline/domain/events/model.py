"""Nouns of the ingest stage: a validated event, outcomes and rejection reasons."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import msgspec


class Reason(enum.StrEnum):
    """Stable, machine-readable reasons an event is rejected. Never renamed once shipped."""

    MALFORMED = "malformed_event"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNSUPPORTED_SPECVERSION = "unsupported_specversion"
    INVALID_TIME = "invalid_time"
    TIME_IN_FUTURE = "time_in_future"
    TIME_TOO_OLD = "time_too_old"
    INVALID_DATA = "invalid_data"
    UNREADABLE_VALUE = "unreadable_value"
    UNREADABLE_GROUP = "unreadable_group"
    GROUP_CARDINALITY = "group_cardinality_exceeded"
    UNKNOWN_SUBJECT = "unknown_subject"


class Status(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    QUARANTINED = "quarantined"


class Event(msgspec.Struct, frozen=True):
    """An event that passed envelope validation, ready for the ledger.

    ``time_us`` is microseconds since the epoch, UTC. ``raw`` is the event exactly as received
    (kept so dead letters and the ledger can return what the producer sent). ``digest``
    fingerprints the payload (type, subject, time, data) so a retried key with a different
    payload is detected.
    """

    namespace: str
    source: str
    id: str
    type: str
    subject: str
    time_us: int
    data: dict[str, Any] | None
    raw: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one event of a request, in request order."""

    index: int
    id: str | None
    source: str | None
    status: Status
    reason: Reason | None = None
    message: str | None = None
    conflict: bool = False


@dataclass(slots=True)
class Candidate:
    """One event of a request: decoded and validated (``event``) or already rejected."""

    index: int
    id: str | None
    source: str | None
    event: Event | None = None
    rejection: Rejection | None = None
    raw: bytes = b""


@dataclass(slots=True)
class Report:
    """Per-request totals plus the per-event outcomes."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(1 for o in self.outcomes if o.status is Status.ACCEPTED)

    @property
    def duplicates(self) -> int:
        return sum(1 for o in self.outcomes if o.status is Status.DUPLICATE)

    @property
    def rejected(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status is Status.REJECTED]
