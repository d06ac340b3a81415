"""Features, entitlements and grants: the repositories the entitlement services write through.

Records arrive complete and validated (ids, times and anchors are the service's); the
repositories store them, keep the uniqueness rules and answer lookups.
"""

from __future__ import annotations

import builtins
from typing import Protocol

from meterline.domain.entitlements.model import Entitlement, Feature, Grant


class FeatureRepository(Protocol):
    def add(self, feature: Feature) -> Feature:
        """Store a new feature; ``Conflict`` ``feature_exists`` when a live one has its key."""
        ...

    def list(self, namespace: str, *, include_archived: bool = False) -> builtins.list[Feature]:
        """Oldest first."""
        ...

    def get(self, namespace: str, id_or_key: str) -> Feature:
        """By id (archived too) or by the key of a live feature; ``NotFound`` ``feature_not_found``."""
        ...

    def archive(self, namespace: str, feature_id: str, at_us: int) -> None:
        """Archive (its key is free again)."""
        ...


class EntitlementRepository(Protocol):
    def add(self, ent: Entitlement, *, replace: bool = False) -> Entitlement:
        """Store a new entitlement. A customer has at most one live entitlement per feature:
        ``Conflict`` ``entitlement_exists``, unless ``replace``, which deletes the live one at
        ``ent.created_us`` in the same transaction."""
        ...

    def list(
        self, namespace: str, *, customer_id: str | None = None, include_deleted: bool = False
    ) -> builtins.list[Entitlement]:
        """Oldest first; deleted ones carry ``deleted_us``."""
        ...

    def get(self, namespace: str, entitlement_id: str) -> Entitlement:
        """Live or deleted; ``NotFound`` ``entitlement_not_found``."""
        ...

    def update(self, ent: Entitlement) -> None:
        """Store a changed entitlement (a reset's new anchor and last reset)."""
        ...

    def delete(self, namespace: str, entitlement_id: str, at_us: int) -> None: ...


class GrantRepository(Protocol):
    def add(self, namespace: str, grant: Grant) -> Grant: ...

    def list(
        self, namespace: str, entitlement_id: str | None = None, *, include_voided: bool = False
    ) -> builtins.list[Grant]:
        """Oldest first; voided ones carry ``voided_us``."""
        ...

    def void(self, namespace: str, grant_id: str, at_us: int) -> None:
        """``NotFound`` ``grant_not_found``; ``Conflict`` ``grant_voided`` when already voided."""
        ...
