"""Meter definitions, OpenMeter-shaped, validated at the boundary."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec

from meterline.domain.errors import InvalidInput, NotSupported
from meterline.domain.identifiers import GROUP_KEY_RULE, SLUG_RULE, is_group_key, is_slug, name_problem, shown
from meterline.domain.meters.paths import Path, compile_path


class Aggregation(enum.StrEnum):
    SUM = "SUM"
    COUNT = "COUNT"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    AVG = "AVG"
    MIN = "MIN"
    MAX = "MAX"
    LATEST = "LATEST"
    TIME_WEIGHTED_SUM = "TIME_WEIGHTED_SUM"
    """A gauge: each event sets the level of its series (subject and group values) until the
    next one; a window's value is the integral of the level over it, in level x seconds
    (``domain.meters.gauges``). An extension of OpenMeter's aggregations."""
    APPROX_UNIQUE_COUNT = "APPROX_UNIQUE_COUNT"
    """Distinct values, approximately: a HyperLogLog sketch per rollup bucket, merged for any
    window (``domain.meters.sketch``: 1.625 % standard error), for cardinalities too high to
    keep every value. An extension of OpenMeter's aggregations."""


MAX_GROUP_BY = 20

INGESTED_BYTES = "ingested_bytes"
"""The slug of the built-in meter of bytes ingested (``[metering] ingested_bytes``): a SUM of
each accepted event's size (``domain.events.size``) over events of every type. Reserved: no
user meter may take it, and the built-in one cannot be changed or deleted."""
ANY_TYPE = "*"
"""The event type the built-in meter shows: it counts events of every type."""
EVERY_TYPE = ""
"""Where meters indexed by event type keep the built-in meters (no event type is empty)."""
RESERVED_SLUGS = frozenset({INGESTED_BYTES})


def ingested_bytes_spec() -> MeterSpec:
    """The definition of the built-in meter of bytes ingested."""
    return MeterSpec(
        slug=INGESTED_BYTES,
        event_type=ANY_TYPE,
        aggregation=Aggregation.SUM,
        name="Ingested bytes",
        description="Bytes of every accepted event (its canonical JSON); built in, read-only",
        metadata={"builtin": "true"},
    )


def is_builtin(spec: MeterSpec) -> bool:
    """Whether ``spec`` is the built-in meter of bytes ingested (users cannot create its slug)."""
    return spec.slug == INGESTED_BYTES and spec.event_type == ANY_TYPE


def type_key(spec: MeterSpec) -> str:
    """The event type a meter is indexed under: its own, or :data:`EVERY_TYPE` for a built-in."""
    return EVERY_TYPE if is_builtin(spec) else spec.event_type


def counts_type(spec: MeterSpec, event_type: str) -> bool:
    """Whether a meter counts events of ``event_type`` (a built-in counts every type)."""
    return spec.event_type == event_type or is_builtin(spec)


class MeterSpec(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """A meter definition as users write it (API body or config file)."""

    slug: str
    event_type: str
    aggregation: Aggregation
    name: str | None = None
    description: str | None = None
    value_property: str | None = None
    group_by: dict[str, str] = {}
    event_from: datetime | None = None
    metadata: dict[str, str] | None = None


class Meter(msgspec.Struct, frozen=True):
    """A stored meter: the spec plus its identity and compiled paths."""

    key: int
    id: str
    namespace: str
    spec: MeterSpec
    created_us: int
    updated_us: int = 0
    """When its definition last changed (its creation, until it is updated)."""

    @property
    def slug(self) -> str:
        return self.spec.slug


class MeterUpdate(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """OpenMeter's meter update (``PUT /api/v1/meters/{meter}``): it replaces the members a
    meter may change. ``name`` defaults to the slug; an absent ``groupBy`` is an empty one."""

    name: str | None = None
    description: str | None = None
    metadata: dict[str, str] | None = None
    group_by: dict[str, str] = {}


def updated_spec(spec: MeterSpec, update: MeterUpdate) -> MeterSpec:
    """``spec`` with ``update`` applied (OpenMeter's rules: the slug, event type, aggregation
    and value property stay; ``groupBy`` may gain, lose or redefine keys). Whether features
    allow a group-by change is :func:`group_by_conflicts`."""
    changed = msgspec.structs.replace(
        spec, name=update.name, description=update.description, metadata=update.metadata, group_by=update.group_by
    )
    problems = validate_spec(changed)
    if problems:
        raise InvalidInput("Invalid meter update: " + "; ".join(problems), code="invalid_meter", problems=problems)
    return changed


def group_by_conflicts(old: MeterSpec, new: MeterSpec, filters: dict[str, set[str]]) -> dict[str, list[str]]:
    """The group-by keys a change from ``old`` to ``new`` removes or redefines (another JSONPath)
    that features filter on, per feature key; ``filters`` holds the keys each feature filters
    on (its ``meterGroupByFilters`` and ``advancedMeterGroupByFilters``). OpenMeter refuses
    dropping such a key; meterline refuses redefining one too, since an entitlement's usage
    would change under it."""
    changed = {k for k, path in old.group_by.items() if new.group_by.get(k) != path}
    found = {feature: sorted(changed & keys) for feature, keys in filters.items()}
    return {feature: keys for feature, keys in sorted(found.items()) if keys}


def group_by_not_supported(mode: str) -> NotSupported:
    """A ``groupBy`` change where the store cannot re-derive the meter's usage from the ledger."""
    return NotSupported(
        f"changing a meter's groupBy re-derives its usage from the ledger, which the {mode} storage mode"
        " does not do; create a new meter with the new groupBy (or use the embedded mode)",
        mode=mode,
        operation="updateMeter",
    )


def validate_spec(spec: MeterSpec) -> list[str]:
    """Every problem with a definition, as messages (empty when it is valid)."""
    problems: list[str] = []
    if not is_slug(spec.slug):
        problems.append(f"slug must be {SLUG_RULE}")
    elif spec.slug in RESERVED_SLUGS:
        problems.append(f"slug {spec.slug!r} is reserved for a built-in meter")
    if spec.name is not None and (problem := name_problem("name", spec.name)):
        problems.append(problem)
    if not spec.event_type or len(spec.event_type) > 512:
        problems.append("eventType is required")
    if spec.description is not None and len(spec.description) > 1024:
        problems.append("description is longer than 1024 characters")
    if spec.event_from is not None and spec.event_from.tzinfo is None:
        problems.append("eventFrom must carry a UTC offset")
    needs_value = spec.aggregation is not Aggregation.COUNT
    if needs_value and not spec.value_property:
        problems.append(f"valueProperty is required for {spec.aggregation.value}")
    if not needs_value and spec.value_property is not None:
        problems.append("COUNT meters take no valueProperty")
    if spec.value_property:
        problems.extend(_path_problem("valueProperty", spec.value_property))
    if len(spec.group_by) > MAX_GROUP_BY:
        problems.append(f"at most {MAX_GROUP_BY} groupBy dimensions")
    for key, path in spec.group_by.items():
        if not is_group_key(key):
            problems.append(f"groupBy key {shown(key)} must be {GROUP_KEY_RULE}")
        problems.extend(_path_problem(f"groupBy.{key}", path))
    return problems


def _path_problem(name: str, path: str) -> list[str]:
    try:
        compile_path(path)
    except InvalidInput as exc:
        return [f"{name}: {exc.detail}"]
    return []


def parse_spec(body: Any) -> MeterSpec:
    """Convert a decoded JSON object into a valid MeterSpec or raise InvalidInput listing every problem."""
    try:
        spec = msgspec.convert(body, MeterSpec)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"Invalid meter definition: {exc}", code="invalid_meter") from None
    problems = validate_spec(spec)
    if problems:
        raise InvalidInput("Invalid meter definition: " + "; ".join(problems), code="invalid_meter", problems=problems)
    return spec


def compiled(spec: MeterSpec) -> tuple[Path | None, tuple[tuple[str, Path], ...]]:
    value = compile_path(spec.value_property) if spec.value_property else None
    groups = tuple(sorted((k, compile_path(p)) for k, p in spec.group_by.items()))
    return value, groups
