"""Customers, namespace settings and the quarantine in memory. Alone they hold no events;
joined to a :class:`~meterline.adapters.memory.ledger.MemoryLedger` (which sets
:attr:`MemoryCustomers.release`), a save releases the quarantined events of the subjects it
claims into that ledger, under the same lock as the save."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Sequence

import msgspec
from ulid import ULID

from meterline.adapters.memory.quarantine import MemoryQuarantine
from meterline.domain.customers.model import (
    Customer,
    CustomerInput,
    UnknownSubjects,
    customer_exists,
    key_is_an_id,
    subject_claimed,
    upserted,
)
from meterline.domain.errors import NotFound
from meterline.ports.customers import Quarantined, Saved


class MemoryCustomers:
    def __init__(self, now_us: Callable[[], int]) -> None:
        self._now_us = now_us
        self.lock = threading.RLock()
        """Held by every read and write here, and by a joined ledger's appends."""
        self.quarantine = MemoryQuarantine()
        self.release: Callable[[str, Sequence[str]], tuple[int, int]] = lambda namespace, subjects: (0, 0)
        """Moves the quarantined events of a namespace's subjects into the joined ledger:
        (accepted, dead-lettered)."""
        self._live: dict[tuple[str, str], Customer] = {}  # (namespace, key) -> customer
        self._owners: dict[tuple[str, str], str] = {}  # (namespace, subject) -> customer key
        self._deleted: dict[tuple[str, str], Customer] = {}  # (namespace, id) -> deleted customer
        self._policies: dict[str, UnknownSubjects] = {}

    def create(self, namespace: str, inp: CustomerInput) -> Saved:
        with self.lock:
            return self._released(namespace, self._save(namespace, inp, None))

    def replace(self, namespace: str, key: str, inp: CustomerInput) -> Saved:
        with self.lock:
            return self._released(namespace, self._save(namespace, inp, self._get(namespace, key)))

    def upsert_many(self, namespace: str, inputs: Sequence[CustomerInput]) -> builtins.list[Saved]:
        with self.lock:
            live, owners = dict(self._live), dict(self._owners)
            try:
                saved = [self._upsert(namespace, inp) for inp in inputs]
            except BaseException:
                self._live, self._owners = live, owners  # all or none
                raise
            return [self._released(namespace, s) for s in saved]  # only once every save stood

    def _released(self, namespace: str, saved: Saved) -> Saved:
        accepted, rejected = self.release(namespace, saved.customer.usage_subjects)
        return Saved(saved.customer, accepted, rejected)

    def _upsert(self, namespace: str, inp: CustomerInput) -> Saved:
        existing = self._live.get((namespace, inp.key))
        return self._save(namespace, inp if existing is None else upserted(existing, inp), existing)

    def delete(self, namespace: str, key: str) -> None:
        with self.lock:
            customer = self._get(namespace, key)
            del self._live[(namespace, customer.key)]
            for subject in customer.subjects:
                self._owners.pop((namespace, subject), None)
            self._deleted[(namespace, customer.id)] = msgspec.structs.replace(customer, deleted_us=self._now_us())

    def get(self, namespace: str, key_or_id: str, *, include_deleted: bool = False) -> Customer:
        with self.lock:
            try:
                return self._get(namespace, key_or_id)
            except NotFound:
                deleted = self._deleted.get((namespace, key_or_id)) if include_deleted else None
                if deleted is None:
                    raise
                return deleted

    def list(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Customer]:
        with self.lock:
            found = [c for (ns, _), c in self._live.items() if ns == namespace]
            if include_deleted:
                found += [c for (ns, _), c in self._deleted.items() if ns == namespace]
            return sorted(found, key=lambda c: (c.key, c.id))

    def by_subject(self, namespace: str, subject: str) -> Customer | None:
        with self.lock:
            key = self._owners.get((namespace, subject))
            return None if key is None else self._live[(namespace, key)]

    def owns(self, namespace: str, subject: str) -> bool:
        """Whether ``subject`` is a live customer's usage: claimed as a subject key, or the
        customer's own key (``Customer.usage_subjects``)."""
        with self.lock:
            return (namespace, subject) in self._owners or (namespace, subject) in self._live

    def quarantined(
        self, namespace: str, subject: str | None, *, limit: int, after_id: int
    ) -> builtins.list[Quarantined]:
        with self.lock:
            return self.quarantine.list(namespace, subject, limit=limit, after_id=after_id)

    def policy(self, namespace: str) -> UnknownSubjects | None:
        return self._policies.get(namespace)

    def set_policy(self, namespace: str, policy: UnknownSubjects) -> None:
        self._policies[namespace] = policy

    def _get(self, namespace: str, key_or_id: str) -> Customer:
        found = self._live.get((namespace, key_or_id))
        if found is None:
            found = next((c for (ns, _), c in self._live.items() if ns == namespace and c.id == key_or_id), None)
        if found is None:
            raise NotFound(f"no customer {key_or_id!r}", code="customer_not_found")
        return found

    def _save(self, namespace: str, inp: CustomerInput, old: Customer | None) -> Saved:
        subjects = inp.subjects()
        for subject in subjects:
            owner = self._owners.get((namespace, subject))
            if owner is not None and (old is None or owner != old.key):
                raise subject_claimed(subject, owner)
        if (old is None or old.key != inp.key) and (namespace, inp.key) in self._live:
            raise customer_exists(inp.key)
        if old is not None and old.key != inp.key:
            other = next((c for (ns, _), c in self._live.items() if ns == namespace and c.id == inp.key), None)
            if other is not None:
                raise key_is_an_id(inp.key, other.key)
            claimer = self._owners.get((namespace, inp.key))
            if claimer is not None and claimer != old.key:
                raise subject_claimed(inp.key, claimer)
            del self._live[(namespace, old.key)]
        now = self._now_us()
        cid, created = (str(ULID()), now) if old is None else (old.id, old.created_us)
        for subject in () if old is None else old.subjects:
            del self._owners[(namespace, subject)]
        self._owners.update(((namespace, s), inp.key) for s in subjects)
        saved = Customer(
            cid, namespace, inp.key, inp.name, subjects, inp.timezone, inp.metadata, created, now, inp.profile()
        )
        self._live[(namespace, inp.key)] = msgspec.structs.replace(saved, subjects=tuple(sorted(subjects)))
        return Saved(saved, 0, 0)


class NoQuarantine:
    """The quarantine of a store without a ledger: nothing is ever held."""

    def quarantined(
        self, namespace: str, subject: str | None, *, limit: int, after_id: int
    ) -> builtins.list[Quarantined]:
        return []
