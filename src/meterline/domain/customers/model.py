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


def key_is_an_id(key: str, owner_key: str) -> Conflict:
    """A customer's new key may not be another customer's id (as in OpenMeter): a path that
    names a customer by key or id must find one customer."""
    return Conflict(
        f"key {key!r} is the id of customer {owner_key!r}", code="customer_key_conflict", customer=owner_key
    )


def subject_rule(policy: UnknownSubjects, owned: Container[str], subject: str) -> UnknownSubjects | Rejection:
    """What ingest does with a valid event of ``subject`` under the namespace's ``policy``,
    ``owned`` being its customers' usage subjects (their subject keys and their keys,
    ``Customer.usage_subjects``): ACCEPT, QUARANTINE, or the rejection."""
    if policy is UnknownSubjects.ACCEPT or subject in owned:
        return UnknownSubjects.ACCEPT
    if policy is UnknownSubjects.REJECT:
        message = f"subject {subject!r} belongs to no customer; create the customer first"
        return Rejection(Reason.UNKNOWN_SUBJECT, message)
    return UnknownSubjects.QUARANTINE


class UsageAttribution(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """OpenMeter's spelling of a customer's subject keys."""

    subject_keys: list[str]


Address = dict[str, str | None]
"""OpenMeter's billing address (``country``, ``postalCode``, ``state``, ``city``, ``line1``, ...)."""


class CustomerInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """What a caller sends to create or replace a customer: meterline's members, and
    OpenMeter's (``usageAttribution``, ``description``, ``primaryEmail``, ``currency``,
    ``billingAddress``), so OpenMeter's customer bodies are taken as they are. ``key`` may be
    left out, as in OpenMeter: the API then gives the customer a generated one."""

    key: str = ""
    name: str | None = None
    subject_keys: list[str] | None = None
    timezone: str = "UTC"
    metadata: dict[str, Any] | None = None
    usage_attribution: UsageAttribution | None = None
    description: str | None = None
    primary_email: str | None = None
    currency: str | None = None
    billing_address: Address | None = None

    def subjects(self) -> tuple[str, ...]:
        keys = self.subject_keys or (self.usage_attribution.subject_keys if self.usage_attribution else None)
        return tuple(dict.fromkeys(keys)) if keys else (self.key,)

    def profile(self) -> dict[str, Any] | None:
        """OpenMeter's descriptive members that were given (kept and answered as sent)."""
        members = {
            "description": self.description,
            "primaryEmail": self.primary_email,
            "currency": self.currency,
            "billingAddress": self.billing_address,
        }
        given = {k: v for k, v in members.items() if v is not None}
        return given or None


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
    profile: dict[str, Any] | None = None
    """OpenMeter's descriptive members (``CustomerInput.profile``)."""
    deleted_us: int | None = None
    """When the customer was deleted (kept, as OpenMeter keeps it; ``subjects`` are then the
    subject keys it had, which it no longer claims)."""

    @property
    def usage_subjects(self) -> tuple[str, ...]:
        """The subjects whose events are this customer's usage: its key and its subject keys,
        as OpenMeter attributes usage (``CustomerUsageAttribution.GetValues``)."""
        return tuple(dict.fromkeys((self.key, *self.subjects)))


def upserted(existing: Customer, inp: CustomerInput) -> CustomerInput:
    """What an upsert (OpenMeter's subject upsert) of an existing customer stores: the new name,
    the new metadata where given, and the customer's own subjects and time zone."""
    kept = CustomerInput(
        inp.key, inp.name, list(existing.subjects), existing.timezone, inp.metadata or existing.metadata
    )
    return with_profile(kept, existing.profile)


def with_profile(inp: CustomerInput, profile: dict[str, Any] | None) -> CustomerInput:
    """``inp`` carrying a stored profile's members."""
    p = profile or {}
    return msgspec.structs.replace(
        inp,
        description=p.get("description"),
        primary_email=p.get("primaryEmail"),
        currency=p.get("currency"),
        billing_address=p.get("billingAddress"),
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
    attributed = inp.usage_attribution.subject_keys if inp.usage_attribution else None
    if inp.subject_keys and attributed and dict.fromkeys(attributed) != dict.fromkeys(inp.subject_keys):
        problems.append("subjectKeys and usageAttribution.subjectKeys differ; send one of them")
    if inp.usage_attribution is not None and not inp.usage_attribution.subject_keys:
        problems.append("usageAttribution.subjectKeys must name at least one subject")
    if inp.currency is not None and not _is_currency(inp.currency):
        problems.append(f"currency {inp.currency[:20]!r} is not an ISO 4217 code")
    for name, text in (("description", inp.description), ("primaryEmail", inp.primary_email)):
        if text is not None and len(text) > 1024:
            problems.append(f"{name} must be at most 1024 characters")
    if inp.billing_address is not None and any(v is not None and len(v) > 256 for v in inp.billing_address.values()):
        problems.append("billingAddress members must be at most 256 characters each")
    if known_zone(inp.timezone) is None:
        problems.append(f"timezone {inp.timezone[:80]!r} is not an IANA time zone (e.g. Europe/Berlin)")
    if problems:
        raise InvalidInput("; ".join(problems), code="invalid_customer", problems=problems)
    return inp


def _is_currency(code: str) -> bool:
    # imported here: the CLI reads this module, and must start without the money stack (babel)
    from meterline.domain.billing.money import is_currency

    return is_currency(code)
