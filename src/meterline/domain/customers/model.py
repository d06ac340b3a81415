"""Customer nouns and their validation.

A customer has a key (unique per namespace), a display name, metadata, the subject keys whose
events are its usage, and the IANA time zone its periods are cut in. OpenMeter's *subjects*
are customers with a single subject equal to their key.

The namespace's *unknown-subject policy* says what ingest does with a valid event whose
subject belongs to no customer: ``accept`` it (counted, as before), ``quarantine`` it (kept,
listable, counted exactly once when a customer claims the subject), or ``reject`` it (to the
dead-letter store with reason ``unknown_subject``).
"""

from __future__ import annotations

import enum
from collections.abc import Container
from typing import Any

import msgspec

from meterline.domain.clock import known_zone
from meterline.domain.errors import Conflict, InvalidInput
from meterline.domain.events.model import Reason, Rejection
from meterline.domain.identifiers import KEY_RULE, MAX_KEY, is_key, is_subject, shown


class UnknownSubjects(enum.StrEnum):
    ACCEPT = "accept"
    QUARANTINE = "quarantine"
    REJECT = "reject"


def subject_claimed(subject: str, owner_key: str) -> Conflict:
    """A subject belongs to one customer of a namespace at a time: a store refuses a second
    claim with this, atomically with the write that tried it."""
    return Conflict(f"subject {subject!r} already belongs to customer {owner_key!r}", code="subject_claimed")


def customer_exists(key: str) -> Conflict:
    """A customer key is unique among a namespace's live customers."""
    return Conflict(f"customer {key!r} already exists", code="customer_exists")


def subject_rule(policy: UnknownSubjects, owned: Container[str], subject: str) -> UnknownSubjects | Rejection:
    """What ingest does with a valid event of ``subject`` under the namespace's ``policy``,
    ``owned`` being the subjects its customers claim: ACCEPT, QUARANTINE, or the rejection."""
    if policy is UnknownSubjects.ACCEPT or subject in owned:
        return UnknownSubjects.ACCEPT
    if policy is UnknownSubjects.REJECT:
        message = f"subject {subject!r} belongs to no customer; create the customer first"
        return Rejection(Reason.UNKNOWN_SUBJECT, message)
    return UnknownSubjects.QUARANTINE


class CustomerInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """What a caller sends to create or replace a customer."""

    key: str
    name: str | None = None
    subject_keys: list[str] | None = None
    timezone: str = "UTC"
    metadata: dict[str, Any] | None = None

    def subjects(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.subject_keys)) if self.subject_keys else (self.key,)


class Customer(msgspec.Struct, frozen=True):
    id: str
    namespace: str
    key: str
    name: str | None
    subjects: tuple[str, ...]
    timezone: str
    metadata: dict[str, Any] | None
    created_us: int
    updated_us: int


def upserted(existing: Customer, inp: CustomerInput) -> CustomerInput:
    """What an upsert (OpenMeter's subject upsert) of an existing customer stores: the new name,
    the new metadata where given, and the customer's own subjects and time zone."""
    return CustomerInput(
        inp.key, inp.name, list(existing.subjects), existing.timezone, inp.metadata or existing.metadata
    )


def validate(inp: CustomerInput) -> CustomerInput:
    """Return ``inp`` if valid; raise one InvalidInput that lists every problem."""
    problems = []
    if not is_key(inp.key):
        problems.append(f"key {shown(inp.key)} must be {KEY_RULE}")
    for subject in inp.subjects():
        if not is_subject(subject):
            problems.append(f"subject key {shown(subject)} must be 1-{MAX_KEY} characters, no control characters")
    if inp.name is not None and len(inp.name) > 256:
        problems.append("name must be at most 256 characters")
    if known_zone(inp.timezone) is None:
        problems.append(f"timezone {inp.timezone[:80]!r} is not an IANA time zone (e.g. Europe/Berlin)")
    if problems:
        raise InvalidInput("; ".join(problems), code="invalid_customer", problems=problems)
    return inp
