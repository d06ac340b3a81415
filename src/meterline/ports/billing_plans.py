"""Where price-plan versions are kept. The rules (drafts change, published versions are
frozen, numbering) are the billing services'; a store keeps versions and runs a change
atomically with the read it is based on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from meterline.domain.billing import PlanVersion


class PlanStore(Protocol):
    def add(self, namespace: str, plan: str, build: Callable[[int], PlanVersion]) -> PlanVersion:
        """Store ``build(latest)``, where ``latest`` is ``plan``'s highest version number (0 when
        it has none), read in the same transaction. An existing (plan, version) raises
        ``Conflict`` ``plan_version_exists``."""
        ...

    def update(
        self, namespace: str, plan: str, version: int, change: Callable[[PlanVersion], PlanVersion]
    ) -> PlanVersion:
        """Replace a version with ``change(current)`` atomically (``NotFound`` ``plan_not_found``);
        whatever ``change`` raises aborts the update."""
        ...

    def versions(self, namespace: str, plan: str | None = None) -> list[PlanVersion]:
        """Every version (of ``plan``, or of every plan), ordered by plan and version."""
        ...

    def get(self, namespace: str, plan: str, version: int) -> PlanVersion:
        """One version; ``NotFound`` ``plan_not_found`` when it does not exist."""
        ...
