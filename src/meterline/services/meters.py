"""The meter catalog (definitions) and what each meter has seen (subjects, group-by values)."""

from __future__ import annotations

import builtins

from meterline.domain.clock import Clock
from meterline.domain.errors import Conflict, InvalidInput
from meterline.domain.meters.model import (
    RESERVED_SLUGS,
    Meter,
    MeterSpec,
    MeterUpdate,
    group_by_conflicts,
    is_builtin,
    updated_spec,
)
from meterline.ports.entitlements import FeatureRepository
from meterline.ports.meter_values import MeterValues
from meterline.ports.meters import MeterCatalog

DAY_S = 86_400


class MeterService:
    def __init__(self, meters: MeterCatalog, values: MeterValues, features: FeatureRepository, clock: Clock) -> None:
        self._meters = meters
        self._values = values
        self._features = features
        self._clock = clock

    def create(self, namespace: str, spec: MeterSpec) -> Meter:
        """A new meter; events already in the ledger are counted into it in the background.
        A built-in meter's slug is refused: 400 ``invalid_meter``."""
        if spec.slug in RESERVED_SLUGS:
            problem = f"slug {spec.slug!r} is reserved for a built-in meter"
            raise InvalidInput(f"Invalid meter definition: {problem}", code="invalid_meter", problems=[problem])
        return self._meters.create(namespace, spec)

    def get(self, namespace: str, id_or_slug: str) -> Meter:
        return self._meters.get(namespace, id_or_slug)

    def list(self, namespace: str) -> builtins.list[Meter]:
        return self._meters.list(namespace)

    def update(self, namespace: str, id_or_slug: str, update: MeterUpdate) -> Meter:
        """OpenMeter's meter update: name, description, metadata and ``groupBy``. A changed
        ``groupBy`` re-derives the meter's usage from the ledger (the store's backfill from
        offset 0; reads wait for it or say it is not done), so queries by a new key are exact
        for earlier events too. As in OpenMeter, a key that live features filter on cannot be
        dropped (nor, here, redefined): 409 ``meter_group_by_in_use`` naming them."""
        meter = _not_builtin(self._meters.get(namespace, id_or_slug), "changed")
        spec = updated_spec(meter.spec, update)
        if spec.group_by != meter.spec.group_by:
            filters = {
                f.spec.key: {*(f.spec.meter_group_by_filters or {}), *(f.spec.advanced_meter_group_by_filters or {})}
                for f in self._features.list(namespace)
                if f.spec.meter_slug == meter.spec.slug
            }
            conflicts = group_by_conflicts(meter.spec, spec, filters)
            if conflicts:
                named = "; ".join(f"{feature!r} filters on {', '.join(keys)}" for feature, keys in conflicts.items())
                raise Conflict(
                    f"meter {meter.spec.slug!r}: groupBy keys that features filter on cannot be dropped or"
                    f" redefined ({named}); change or archive those features first",
                    code="meter_group_by_in_use",
                    features=sorted(conflicts),
                    groupBy=sorted({k for keys in conflicts.values() for k in keys}),
                )
        return self._meters.update(namespace, meter.id, spec)

    def delete(self, namespace: str, id_or_slug: str) -> None:
        """Delete a meter no live feature uses; as OpenMeter does, a meter with active features
        is a 409 ``meter_in_use`` (naming them in ``features``): archive those first."""
        meter = _not_builtin(self._meters.get(namespace, id_or_slug), "deleted")
        using = [f.spec.key for f in self._features.list(namespace) if f.spec.meter_slug == meter.spec.slug]
        if using:
            raise Conflict(
                f"meter {meter.spec.slug!r} is used by the features {', '.join(map(repr, using))};"
                " archive them first (DELETE /api/v1/features/{key})",
                code="meter_in_use",
                features=using,
            )
        self._meters.delete(namespace, meter.id)

    def subjects(self, namespace: str, meter: str, start: int | None, end: int | None) -> builtins.list[str]:
        """The meter's subjects within ``[start, end)`` (epoch seconds); all time without either."""
        return self._values.subjects(self._meters.get(namespace, meter), start, end)

    def group_values(
        self, namespace: str, meter: str, dimension: str, start: int | None, end: int | None
    ) -> builtins.list[str]:
        """The values of one groupBy key within ``[start, end)``; the last 24 hours without
        either (OpenMeter's default)."""
        m = self._meters.get(namespace, meter)
        if dimension not in m.spec.group_by:
            known = ", ".join(sorted(m.spec.group_by)) or "none"
            raise InvalidInput(
                f"{dimension!r} is not a groupBy key of meter {m.spec.slug!r} (its keys: {known})",
                code="invalid_group_by",
            )
        if start is None and end is None:
            start = self._clock.now_us() // 1_000_000 - DAY_S
        return self._values.group_values(m, dimension, start, end)


def _not_builtin(meter: Meter, done: str) -> Meter:
    """``meter``, unless it is built in: those are read-only (409 ``meter_builtin``)."""
    if is_builtin(meter.spec):
        raise Conflict(
            f"meter {meter.spec.slug!r} is built in and cannot be {done}; it is kept while the"
            " server's [metering] setting for it is on",
            code="meter_builtin",
        )
    return meter
