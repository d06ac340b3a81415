"""Features, entitlements and grants in memory."""

from __future__ import annotations

import builtins
import threading

import msgspec

from meterline.domain.entitlements.model import Entitlement, Feature, Grant
from meterline.domain.errors import Conflict, NotFound


class MemoryFeatures:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, Feature] = {}  # by id, in creation order

    def add(self, feature: Feature) -> Feature:
        with self._lock:
            if self._live(feature.namespace, feature.key) is not None:
                raise Conflict(f"feature {feature.key!r} already exists", code="feature_exists")
            self._rows[feature.id] = feature
            return feature

    def list(self, namespace: str, *, include_archived: bool = False) -> builtins.list[Feature]:
        with self._lock:
            rows = [f for f in self._rows.values() if f.namespace == namespace]
        return sorted(
            (f for f in rows if include_archived or f.archived_us is None), key=lambda f: (f.created_us, f.id)
        )

    def get(self, namespace: str, id_or_key: str) -> Feature:
        with self._lock:
            found = self._rows.get(id_or_key)
            if found is None or found.namespace != namespace:
                found = self._live(namespace, id_or_key)
        if found is None:
            raise NotFound(f"no feature {id_or_key!r}", code="feature_not_found")
        return found

    def archive(self, namespace: str, feature_id: str, at_us: int) -> None:
        with self._lock:
            found = self._rows.get(feature_id)
            if found is not None and found.namespace == namespace:
                self._rows[feature_id] = msgspec.structs.replace(found, archived_us=at_us)

    def _live(self, namespace: str, key: str) -> Feature | None:
        return next(
            (f for f in self._rows.values() if (f.namespace, f.key) == (namespace, key) and f.archived_us is None),
            None,
        )


class MemoryEntitlements:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, Entitlement] = {}

    def add(self, ent: Entitlement, *, replace: bool = False) -> Entitlement:
        with self._lock:
            same = [
                e
                for e in self._rows.values()
                if (e.namespace, e.customer_id, e.feature_id) == (ent.namespace, ent.customer_id, ent.feature_id)
                and e.deleted_us is None
            ]
            if same and not replace:
                raise Conflict(
                    f"customer {ent.customer_key!r} already has an entitlement to {ent.feature_key!r}",
                    code="entitlement_exists",
                )
            for old in same:
                self._rows[old.id] = msgspec.structs.replace(old, deleted_us=ent.created_us)
            self._rows[ent.id] = ent
            return ent

    def list(
        self, namespace: str, *, customer_id: str | None = None, include_deleted: bool = False
    ) -> builtins.list[Entitlement]:
        with self._lock:
            rows = list(self._rows.values())
        return sorted(
            (
                e
                for e in rows
                if e.namespace == namespace
                and customer_id in (None, e.customer_id)
                and (include_deleted or e.deleted_us is None)
            ),
            key=lambda e: (e.created_us, e.id),
        )

    def get(self, namespace: str, entitlement_id: str) -> Entitlement:
        found = self._rows.get(entitlement_id)
        if found is None or found.namespace != namespace:
            raise NotFound(f"no entitlement {entitlement_id!r}", code="entitlement_not_found")
        return found

    def update(self, ent: Entitlement) -> None:
        with self._lock:
            old = self._rows.get(ent.id)
            if old is not None and old.namespace == ent.namespace:
                self._rows[ent.id] = msgspec.structs.replace(ent, deleted_us=old.deleted_us)

    def delete(self, namespace: str, entitlement_id: str, at_us: int) -> None:
        with self._lock:
            old = self._rows.get(entitlement_id)
            if old is not None and old.namespace == namespace:
                self._rows[entitlement_id] = msgspec.structs.replace(old, deleted_us=at_us)


class MemoryGrants:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[str, Grant]] = {}  # id -> (namespace, grant)

    def add(self, namespace: str, grant: Grant) -> Grant:
        with self._lock:
            self._rows[grant.id] = (namespace, grant)
        return grant

    def list(
        self, namespace: str, entitlement_id: str | None = None, *, include_voided: bool = False
    ) -> builtins.list[Grant]:
        with self._lock:
            rows = list(self._rows.values())
        return sorted(
            (
                g
                for ns, g in rows
                if ns == namespace
                and entitlement_id in (None, g.entitlement_id)
                and (include_voided or g.voided_us is None)
            ),
            key=lambda g: (g.created_us, g.id),
        )

    def void(self, namespace: str, grant_id: str, at_us: int) -> None:
        with self._lock:
            ns, grant = self._rows.get(grant_id, ("", None))
            if grant is None or ns != namespace:
                raise NotFound(f"no grant {grant_id!r}", code="grant_not_found")
            if grant.voided_us is not None:
                raise Conflict(f"grant {grant_id!r} is already voided", code="grant_voided")
            self._rows[grant_id] = (ns, msgspec.structs.replace(grant, voided_us=at_us))
