"""Customers and their namespace's unknown-subject policy: the rules around the repositories.

Inputs are validated here, before anything is stored (every problem in one ``InvalidInput``);
uniqueness of keys and subject claims is the repository's, checked in its transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from meterline.domain.customers.model import Customer, CustomerInput, UnknownSubjects, validate
from meterline.domain.errors import InvalidInput, NotFound
from meterline.ports.customers import CustomerRepository, NamespaceSettings, Quarantine, Quarantined, Saved


class CustomerService:
    def __init__(
        self,
        customers: CustomerRepository,
        settings: NamespaceSettings,
        quarantine: Quarantine,
        *,
        default_policy: UnknownSubjects,
    ) -> None:
        self._customers = customers
        self._settings = settings
        self._quarantine = quarantine
        self._default_policy = default_policy

    def create(self, namespace: str, inp: CustomerInput) -> Saved:
        return self._customers.create(namespace, validate(inp))

    def replace(self, namespace: str, key: str, inp: CustomerInput) -> Saved:
        """Replace the customer ``key`` (or id). As in OpenMeter, the body's key may differ:
        the customer's key changes (409 when it is another customer's key or id, or a subject
        another customer claims); its id, entitlements and subscriptions stay its own. A
        deleted customer (named by its id) cannot be updated: 400 ``customer_deleted``."""
        inp = validate(inp)
        try:
            return self._customers.replace(namespace, key, inp)
        except NotFound:
            deleted = self._customers.get(namespace, key, include_deleted=True)  # NotFound when there is none
            raise InvalidInput(
                f"customer {deleted.id!r} is deleted and cannot be updated", code="customer_deleted"
            ) from None

    def upsert_many(self, namespace: str, inputs: Sequence[CustomerInput]) -> builtins.list[Saved]:
        """OpenMeter's subject upsert: every input is validated first, then all are stored
        together or none is."""
        for inp in inputs:
            validate(inp)
        return self._customers.upsert_many(namespace, inputs)

    def delete(self, namespace: str, key: str) -> None:
        """OpenMeter's soft delete: the customer is kept with ``deletedAt`` (listed with
        ``includeDeleted``, found by its id) and its key and subject keys are free for other
        customers; everything that resolves subjects to customers no longer finds it. A
        deleted customer cannot be deleted again (404)."""
        self._customers.delete(namespace, key)

    def get(self, namespace: str, key_or_id: str, *, include_deleted: bool = False) -> Customer:
        """The live customer with this key or id; with ``include_deleted`` also a deleted one
        by its id, as OpenMeter's ``GET /api/v1/customers/{id}`` answers it."""
        return self._customers.get(namespace, key_or_id, include_deleted=include_deleted)

    def list(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Customer]:
        return self._customers.list(namespace, include_deleted=include_deleted)

    def owner(self, namespace: str, subject: str) -> Customer | None:
        """The customer ``subject`` is attributed to, as OpenMeter resolves a usage attribution:
        the one keyed by it, else the one claiming it as a subject key."""
        try:
            keyed = self._customers.get(namespace, subject)
        except NotFound:
            keyed = None
        if keyed is not None and keyed.key == subject:
            return keyed
        return self._customers.by_subject(namespace, subject)

    def policy(self, namespace: str) -> UnknownSubjects:
        """The namespace's unknown-subject policy, or the configured default."""
        return self._settings.policy(namespace) or self._default_policy

    def set_policy(self, namespace: str, policy: UnknownSubjects) -> None:
        self._settings.set_policy(namespace, policy)

    def quarantined(
        self, namespace: str, subject: str | None, *, limit: int, after_id: int
    ) -> builtins.list[Quarantined]:
        return self._quarantine.quarantined(namespace, subject, limit=limit, after_id=after_id)
