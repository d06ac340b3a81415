"""Features (what a customer can be entitled to) and grants (extra allowance on a metered
entitlement for a while)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

import msgspec
from ulid import ULID

from meterline.domain.clock import Clock, from_us, rfc3339, to_us
from meterline.domain.entitlements.model import (
    Entitlement,
    Feature,
    FeatureInput,
    Grant,
    GrantInput,
    validate_feature,
    validate_grant,
)
from meterline.domain.entitlements.rules import default_grant, default_grant_owner, grant_expiry_us
from meterline.domain.errors import Conflict, InvalidInput, NotFound
from meterline.ports.entitlements import FeatureRepository, GrantRepository
from meterline.ports.meters import MeterCatalog
from meterline.services.entitlements import EntitlementService

MINUTE_US = 60_000_000


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

    def grant(self, namespace: str, owner: str, entitlement: str, inp: GrantInput, *, expires: bool = True) -> Grant:
        """Add a grant to the customer's live metered entitlement (by id or feature). As in
        OpenMeter, ``effectiveAt`` counts to the minute and may not lie before the current
        usage period: the balances of closed periods are not rewritten."""
        ent = self._entitlements.find(namespace, owner, entitlement)
        validate_grant(inp)
        if ent.spec.type != "metered":
            raise InvalidInput("grants add to metered entitlements only", code="invalid_grant")
        effective = to_us(inp.effective_at)
        effective -= effective % MINUTE_US
        start = self._entitlements.period_start_us(ent, self._clock.now_us())
        if start is not None and effective < start:
            raise InvalidInput(
                f"effectiveAt {rfc3339(effective)} is before the current usage period, which starts {rfc3339(start)}",
                code="invalid_grant",
            )
        inp = msgspec.structs.replace(inp, effective_at=from_us(effective))
        expiry = grant_expiry_us(inp) if expires else None  # v2: a grant sent without expiration never expires
        grant = Grant(str(ULID()), ent.id, inp, effective, expiry, self._clock.now_us())
        stored = self._grants.add(namespace, grant)
        self._entitlements.changed(ent)
        return stored

    def grants_of(
        self, namespace: str, owner: str, entitlement: str, *, include_voided: bool = False
    ) -> builtins.list[Grant]:
        """The entitlement's grants, the one its ``issueAfterReset`` stands for among them (as
        OpenMeter lists the default grant it creates)."""
        ent = self._entitlements.find(namespace, owner, entitlement)
        issued = _issued([ent], include_voided)
        return [*self._grants.list(namespace, ent.id, include_voided=include_voided), *issued]

    def grants(self, namespace: str, *, include_voided: bool = False) -> builtins.list[Grant]:
        """Every grant of the namespace, with those ``issueAfterReset`` stands for on live
        entitlements."""
        issued = _issued(self._entitlements.list(namespace), include_voided)
        return [*self._grants.list(namespace, include_voided=include_voided), *issued]

    def void_grant(self, namespace: str, grant_id: str, at_us: int | None) -> None:
        """Void a grant at ``at_us`` (default now), to the minute: as in OpenMeter, not in the
        future and not before its entitlement's current usage period."""
        now = self._clock.now_us()
        at = now if at_us is None else at_us
        at -= at % MINUTE_US
        if at > now:
            raise InvalidInput("a grant cannot be voided in the future", code="invalid_void")
        if self._void_issued(namespace, grant_id, at, now):
            return
        grant = next((g for g in self._grants.list(namespace, include_voided=True) if g.id == grant_id), None)
        ent: Entitlement | None = None
        if grant is not None:
            try:
                ent = self._entitlements.get(namespace, grant.entitlement_id)
            except NotFound:
                ent = None
            start = None if ent is None or ent.deleted_us is not None else self._entitlements.period_start_us(ent, now)
            if start is not None and at < start:
                raise InvalidInput(
                    f"a grant cannot be voided before the current usage period, which starts {rfc3339(start)}",
                    code="invalid_void",
                )
        self._grants.void(namespace, grant_id, at)
        if ent is not None and ent.deleted_us is None:
            self._entitlements.changed(ent)

    def _void_issued(self, namespace: str, grant_id: str, at: int, now: int) -> bool:
        """Void the grant an entitlement's ``issueAfterReset`` stands for (False: ``grant_id``
        names no such grant), with the rules of any grant."""
        owner = default_grant_owner(grant_id)
        if owner is None:
            return False
        try:
            ent = self._entitlements.get(namespace, owner)
        except NotFound:
            return False
        if ent.deleted_us is not None or default_grant(ent) is None:
            return False
        if ent.issue_voided_us is not None:
            raise Conflict(f"grant {grant_id!r} is already voided", code="grant_voided")
        start = self._entitlements.period_start_us(ent, now)
        if start is not None and at < start:
            raise InvalidInput(
                f"a grant cannot be voided before the current usage period, which starts {rfc3339(start)}",
                code="invalid_void",
            )
        self._entitlements.void_issued(ent, at)
        return True


def _issued(entitlements: Sequence[Entitlement], include_voided: bool) -> builtins.list[Grant]:
    """The grants ``issueAfterReset`` stands for on ``entitlements`` (voided ones when asked)."""
    found = (default_grant(e) for e in entitlements)
    return [g for g in found if g is not None and (include_voided or g.voided_us is None)]
