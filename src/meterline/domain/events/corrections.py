"""Corrections: voiding or amending an accepted event without rewriting the ledger.

A correction is a new ledger entry with the original's idempotency key (namespace, source, id)
that *supersedes* the key's current version: a **void** leaves the key with no version (it
counts nowhere from then on), an **amend** makes the correction entry itself the new version
(new data, subject or time; same key). The original entry is never changed. The versions of a
key form a chain (original, then each correction in ledger order); the last entry decides what
counts. A retry of the key after a correction is a duplicate, never counted again.

Errors (stable codes, see ``meterline.domain.errors``):

    NotFound   event_not_found        404  no accepted event has this key
    Conflict   event_voided           409  the event is voided: nothing left to void or amend
    InvalidInput invalid_correction   400  a reason missing or too long, an amend that changes the key
    InvalidInput amend_unreadable     400  a live meter cannot read the amended event (extra: reason)
    InvalidInput amend_unknown_subject 400 the amend moves the event to a subject no customer owns
                                           under the quarantine or reject policy (services.corrections)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

from meterline.domain.errors import Conflict, InvalidInput, NotFound
from meterline.domain.events.model import Event

MAX_REASON = 1000


class Action(enum.StrEnum):
    VOID = "void"
    AMEND = "amend"


@dataclass(frozen=True, slots=True)
class CorrectionRequest:
    """What the caller asked: ``event`` is the new version for an amend (None for a void)."""

    namespace: str
    source: str
    event_id: str
    action: Action
    reason: str
    actor: str
    event: Event | None = None


@dataclass(frozen=True, slots=True)
class Version:
    """One ledger entry of a key's chain: the original (``action`` None) or a correction."""

    seq: int
    action: Action | None
    received_us: int
    type: str
    subject: str
    time_us: int
    raw: bytes | None
    """The event of this version (None for a void)."""
    reason: str | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    """A key's chain in ledger order; ``current`` is the version that counts (None: voided)."""

    namespace: str
    source: str
    event_id: str
    versions: tuple[Version, ...]

    @property
    def current(self) -> Version | None:
        last = self.versions[-1]
        return None if last.action is Action.VOID else last

    @property
    def voided(self) -> bool:
        return self.versions[-1].action is Action.VOID


def void_record(event_id: str, source: str, reason: str, actor: str) -> bytes:
    """The stored body of a void entry of a partitioned log: the key it voids and why (never
    read as an event: it has no ``specversion``)."""
    return msgspec.json.encode({"id": event_id, "source": source, "void": {"reason": reason, "actor": actor}})


class _Body(msgspec.Struct):
    void: dict[str, object] | None = None
    specversion: str | None = None


_body = msgspec.json.Decoder(_Body)


def is_void_record(raw: bytes) -> bool:
    """A void entry's stored body (:func:`void_record`, or the embedded ledger's), not a CloudEvent."""
    try:
        body = _body.decode(raw)
    except msgspec.DecodeError:
        return False
    return body.void is not None and body.specversion is None


def check_request(req: CorrectionRequest) -> None:
    """Validate a request before it reaches the ledger (the key's state is checked there)."""
    if not req.reason.strip():
        raise InvalidInput("A correction needs a `reason`", code="invalid_correction")
    if len(req.reason) > MAX_REASON:
        raise InvalidInput(f"`reason` is longer than {MAX_REASON} characters", code="invalid_correction")
    if req.action is Action.AMEND:
        if req.event is None:
            raise InvalidInput("An amend needs the amended `event`", code="invalid_correction")
        if (req.event.source, req.event.id) != (req.source, req.event_id):
            raise InvalidInput("An amend keeps the event's `id` and `source`", code="invalid_correction")


def event_not_found(source: str, event_id: str) -> NotFound:
    return NotFound(f"No accepted event with id {event_id!r} from source {source!r}", code="event_not_found")


def event_pruned(source: str, event_id: str) -> Conflict:
    return Conflict(
        f"Event {event_id!r} from source {source!r} lies in a period whose raw events were removed by retention:"
        " its hour can no longer be recomputed from the ledger, so it cannot be corrected (its rollups stand)",
        code="event_pruned",
    )


def event_voided(event_id: str) -> Conflict:
    return Conflict(f"Event {event_id!r} is voided: it can be neither voided nor amended again", code="event_voided")


def ambiguous_source(event_id: str) -> InvalidInput:
    return InvalidInput(f"Events from several sources have id {event_id!r}: name the `source`", code="ambiguous_event")
