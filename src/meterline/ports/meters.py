"""The meter catalog: definitions by namespace (the usage they count is the UsageStore's)."""

from __future__ import annotations

import builtins
from collections.abc import Collection
from typing import Protocol

from meterline.domain.meters.model import Meter, MeterSpec
from meterline.domain.meters.query import MeterQuery, Row
from meterline.domain.meters.top import OwnerRanks


class MeterCatalog(Protocol):
    def create(self, namespace: str, spec: MeterSpec) -> Meter:
        """``Conflict`` ``meter_exists`` when a live meter has the slug."""
        ...

    def get(self, namespace: str, id_or_slug: str) -> Meter:
        """``NotFound`` ``meter_not_found``."""
        ...

    def list(self, namespace: str) -> builtins.list[Meter]: ...

    def update(self, namespace: str, id_or_slug: str, spec: MeterSpec) -> Meter:
        """Replace a live meter's definition with ``spec``, whose slug, event type,
        aggregation, value property, group-by and ``eventFrom`` are the meter's (the service
        checks that: its usage stays valid); ``NotFound`` ``meter_not_found``."""
        ...

    def delete(self, namespace: str, id_or_slug: str) -> None:
        """Delete a live meter and its usage; ``NotFound`` ``meter_not_found``."""
        ...


class UsageReader(Protocol):
    def query(self, meter: Meter, query: MeterQuery) -> builtins.list[Row]:
        """The meter's usage for ``query``. Waits first, bounded, as the request's freshness
        asks (``runtime.freshness``): by default until the usage reflects the ledger as of now."""
        ...


class UsageRanking(Protocol):
    """Usage ranked by the customers that own it, where usage and customers are stored side by
    side (the embedded store): the store returns the top of the ranking and who used a meter
    instead of every subject's value. A store without it leaves the ranking to the caller."""

    def rank(self, meter: Meter, query: MeterQuery, limit: int) -> OwnerRanks | None:
        """``meter``'s usage over ``query``'s range (one window, split by subject: the rows
        ``UsageReader.query`` answers) ranked with ``limit`` entries; None when this store
        cannot rank it exactly itself (the caller then ranks those rows). Waits as
        ``UsageReader.query`` does."""
        ...

    def keys(self, namespace: str, ids: Collection[str]) -> dict[str, str]:
        """Customer id -> key of the live customers among ``ids``."""
        ...
