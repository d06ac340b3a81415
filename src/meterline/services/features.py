"""Features (what a customer can be entitled to) and grants (extra allowance on a metered
entitlement for a while)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from ulid import ULID

from meterline.domain.clock import Clock, to_us
from meterline.domain.entitlements.model import (
    Feature,
    FeatureInput,
    Grant,
    GrantInput,
    validate_feature,
    validate_grant,
)
from meterline.domain.entitlements.rules import grant_expiry_us
from meterline.domain.errors import InvalidInput
from meterline.ports.entitlements import FeatureRepository, GrantRepository
from meterline.ports.meters import MeterCatalog
from meterline.services.entitlements import EntitlementService


class FeatureService:
    def __init__(
        self,
        features: FeatureRepository,
        grants: GrantRepository,
        meters: MeterCatalog,
        entitlements: EntitlementService,
        clock: Clock,
    ) -> None:
        self._features = features
        self._grants = grants
        self._meters = meters
        self._entitlements = entitlements
        self._clock = clock

    def create(self, namespace: str, inp: FeatureInput) -> Feature:
        """A new feature; its meter (if any) must exist and have every filtered dimension."""
        validate_feature(inp)
        if inp.meter_slug is not None:
            meter = self._meters.get(namespace, inp.meter_slug)
            for dim in inp.meter_group_by_filters or {}:
                if dim not in meter.spec.group_by:
                    raise InvalidInput(f"meter {meter.slug!r} has no groupBy {dim!r}", code="invalid_feature")
        return self._features.add(Feature(str(ULID()), namespace, inp, self._clock.now_us()))

    def list(self, namespace: str, *, include_archived: bool = False, meters: Sequence[str] = ()) -> list[Feature]:
        """Features, oldest first; with ``meters``, only those counting one of them."""
        features = self._features.list(namespace, include_archived=include_archived)
        return [f for f in features if not meters or f.spec.meter_slug in meters]

    def get(self, namespace: str, id_or_key: str) -> Feature:
        return self._features.get(namespace, id_or_key)

    def archive(self, namespace: str, id_or_key: str) -> None:
        feature = self._features.get(namespace, id_or_key)
        self._features.archive(namespace, feature.id, self._clock.now_us())

    # -- grants -----------------------------------------------------------------------------

    def grant(self, namespace: str, owner: str, entitlement: str, inp: GrantInput) -> Grant:
        """Add a grant to the customer's metered entitlement (by id or feature)."""
        ent = self._entitlements.find(namespace, owner, entitlement)
        validate_grant(inp)
        if ent.spec.type != "metered":
            raise InvalidInput("grants add to metered entitlements only", code="invalid_grant")
        effective = to_us(inp.effective_at)
        grant = Grant(str(ULID()), ent.id, inp, effective, grant_expiry_us(inp), self._clock.now_us())
        return self._grants.add(namespace, grant)

    def grants_of(
        self, namespace: str, owner: str, entitlement: str, *, include_voided: bool = False
    ) -> builtins.list[Grant]:
        ent = self._entitlements.find(namespace, owner, entitlement)
        return self._grants.list(namespace, ent.id, include_voided=include_voided)

    def grants(self, namespace: str, *, include_voided: bool = False) -> builtins.list[Grant]:
        return self._grants.list(namespace, include_voided=include_voided)

    def void_grant(self, namespace: str, grant_id: str, at_us: int | None) -> None:
        """Void a grant at ``at_us`` (default now)."""
        self._grants.void(namespace, grant_id, at_us or self._clock.now_us())
