"""Customers, the namespace settings and the quarantine of events no customer claimed yet."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from meterline.domain.customers.model import Customer, CustomerInput, UnknownSubjects


@dataclass(frozen=True, slots=True)
class Saved:
    """A stored customer and how many quarantined events its subjects released into the ledger
    (``released`` accepted, ``released_rejected`` dead-lettered), in the same transaction."""

    customer: Customer
    released: int
    released_rejected: int


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    source: str
    event_id: str
    type: str
    subject: str
    time_us: int
    received_us: int
    raw: bytes


class CustomerRepository(Protocol):
    """Customers by namespace. Inputs arrive validated; the repository enforces uniqueness:
    ``Conflict`` ``customer_exists`` for a taken key, ``subject_claimed`` for a subject another
    customer holds, ``NotFound`` ``customer_not_found`` for a missing one. Every write is one
    transaction (a customer, its subject claims and the release of its quarantined events)."""

    def create(self, namespace: str, inp: CustomerInput) -> Saved: ...

    def replace(self, namespace: str, key: str, inp: CustomerInput) -> Saved:
        """Replace the live customer ``key`` (its id and creation time stay)."""
        ...

    def upsert_many(self, namespace: str, inputs: Sequence[CustomerInput]) -> builtins.list[Saved]:
        """Create or update each by key (an update keeps the customer's subjects and zone, see
        :func:`~meterline.domain.customers.model.upserted`), all in one transaction or none."""
        ...

    def delete(self, namespace: str, key: str) -> None:
        """Mark the live customer ``key`` (or id) deleted (``deleted_us``; it is kept with the
        subject keys it had) and free its key and subject keys for other customers."""
        ...

    def get(self, namespace: str, key_or_id: str, *, include_deleted: bool = False) -> Customer:
        """The live customer with this key or id; with ``include_deleted`` also a deleted one
        by its id (as OpenMeter answers: a deleted customer's key may belong to a new one)."""
        ...

    def list(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Customer]:
        """Live customers (and the deleted ones with ``include_deleted``), by key."""
        ...

    def by_subject(self, namespace: str, subject: str) -> Customer | None: ...


class NamespaceSettings(Protocol):
    def policy(self, namespace: str) -> UnknownSubjects | None:
        """The namespace's unknown-subject policy, None where it was never set."""
        ...

    def set_policy(self, namespace: str, policy: UnknownSubjects) -> None: ...


class Quarantine(Protocol):
    def quarantined(
        self, namespace: str, subject: str | None, *, limit: int, after_id: int
    ) -> builtins.list[Quarantined]:
        """Quarantined events with ``id > after_id`` (of ``subject`` when given), oldest first."""
        ...
