"""Entitlement nouns and their validation.

A *feature* is something a customer can be entitled to; a metered feature counts a meter
(optionally only some of its group values). An *entitlement* gives one customer one feature:

- ``metered``: usage of the feature's meter in a recurring period (cut in the customer's time
  zone) against a limit (``issueAfterReset``) plus active grants; ``isSoftLimit`` lets usage
  run past the limit (overage) instead of denying access; ``softLimit`` is a warning level.
- ``boolean``: access or not.
- ``static``: access plus a JSON configuration value.

Field names follow OpenMeter's v1 API so its SDK works unchanged.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec

from meterline.domain.errors import InvalidInput
from meterline.domain.identifiers import SLUG_RULE, is_slug, name_problem, shown
from meterline.domain.periods import recurrence


class FeatureInput(msgspec.Struct, frozen=True, rename="camel"):
    key: str
    name: str
    metadata: dict[str, str] | None = None
    meter_slug: str | None = None
    meter_group_by_filters: dict[str, str] | None = None
    advanced_meter_group_by_filters: dict[str, Any] | None = None
    unit_cost: Any = None
    """OpenMeter's per-unit cost (LLM cost tracking): not supported, refused by name rather than
    silently dropped."""


class Feature(msgspec.Struct, frozen=True):
    id: str
    namespace: str
    spec: FeatureInput
    created_us: int
    archived_us: int | None = None

    @property
    def key(self) -> str:
        return self.spec.key


class UsagePeriodInput(msgspec.Struct, frozen=True):
    interval: str
    anchor: datetime | None = None


class EntitlementInput(msgspec.Struct, frozen=True, rename="camel"):
    """One shape for the three types; ``validate`` checks what each type needs."""

    type: Literal["metered", "boolean", "static"]
    feature_key: str | None = None
    feature_id: str | None = None
    metadata: dict[str, str] | None = None
    usage_period: UsagePeriodInput | None = None
    # metered
    is_soft_limit: bool = False
    is_unlimited: bool = False
    issue_after_reset: Decimal | None = None
    issue_after_reset_priority: int = 1
    preserve_overage_at_reset: bool = False
    measure_usage_from: Any = None
    soft_limit: Decimal | None = None
    # static
    config: str | None = None


class Entitlement(msgspec.Struct, frozen=True):
    id: str
    namespace: str
    customer_id: str
    customer_key: str
    feature_id: str
    feature_key: str
    spec: EntitlementInput
    anchor_us: int
    last_reset_us: int
    created_us: int
    deleted_us: int | None = None
    reset_overage: Decimal = Decimal(0)
    """The overage carried into the period that starts at ``last_reset_us`` by a reset that
    preserved it, less what the rolled-over grants covered (``domain.entitlements.credit``)."""
    measured_from_us: int | None = None
    """OpenMeter's ``measureUsageFrom`` as resolved at creation (None: created before it was
    kept; then ``last_reset_us`` stands for it)."""
    reset_balances: dict[str, Decimal] | None = None
    """Each grant's balance at the start of the period that begins at ``last_reset_us`` (after
    the rollover and the burn of the preserved overage), kept by the reset (the credit engine
    resumes there); None before the first reset, or for a reset made before they were kept."""
    issue_voided_us: int | None = None
    """When the grant ``issueAfterReset`` stands for was voided (OpenMeter voids the default
    grant it creates like any grant); None while it counts."""
    earlier_resets: tuple[tuple[int, int], ...] = ()
    """The usage periods' history before ``last_reset_us``, as OpenMeter keeps its resets: the
    start of each earlier span (measurement, then each reset) with the anchor in force from
    there, oldest first (empty before the first reset, or for resets made before it was kept)."""


class GrantInput(msgspec.Struct, frozen=True, rename="camel"):
    amount: Decimal
    effective_at: datetime
    expiration: dict[str, Any]
    priority: int = 0
    """OpenMeter's server takes a grant sent without one as priority 0 (burnt first)."""
    max_rollover_amount: Decimal = Decimal(0)
    min_rollover_amount: Decimal = Decimal(0)
    metadata: dict[str, str] | None = None
    recurrence: UsagePeriodInput | None = None


class Grant(msgspec.Struct, frozen=True):
    id: str
    entitlement_id: str
    spec: GrantInput
    effective_us: int
    expires_us: int | None
    created_us: int
    voided_us: int | None = None


def validate_feature(inp: FeatureInput) -> None:
    problems = []
    if not is_slug(inp.key):
        problems.append(f"key {shown(inp.key)} must be {SLUG_RULE}")
    if problem := name_problem("name", inp.name):
        problems.append(problem)
    if inp.meter_slug is not None and not is_slug(inp.meter_slug):
        problems.append(f"meterSlug {shown(inp.meter_slug)} must be {SLUG_RULE}")
    if inp.advanced_meter_group_by_filters:
        problems.append("advancedMeterGroupByFilters is not supported; use meterGroupByFilters (dimension: value)")
    if inp.unit_cost is not None:
        problems.append("unitCost is not supported (meterline prices usage with its billing plans)")
    if inp.meter_group_by_filters and not inp.meter_slug:
        problems.append("meterGroupByFilters needs meterSlug")
    _raise(problems, "invalid_feature")


def validate_entitlement(inp: EntitlementInput) -> None:
    problems = []
    if not inp.feature_key and not inp.feature_id:
        problems.append("featureKey or featureId is required")
    for name, value in (("issueAfterReset", inp.issue_after_reset), ("softLimit", inp.soft_limit)):
        if value is not None and (not value.is_finite() or value < 0):
            problems.append(f"{name} must be a non-negative number")
    if inp.type == "metered":
        if inp.usage_period is None:
            problems.append("a metered entitlement needs usagePeriod")
        if not _measure_from_ok(inp.measure_usage_from):
            problems.append('measureUsageFrom must be "CURRENT_PERIOD_START", "NOW" or a date-time with a UTC offset')
    elif inp.preserve_overage_at_reset or inp.measure_usage_from is not None:
        problems.append("preserveOverageAtReset and measureUsageFrom are for metered entitlements")
    if inp.type == "static":
        if inp.config is None:
            problems.append("a static entitlement needs config (a JSON value as a string)")
        else:
            try:
                msgspec.json.decode(inp.config)
            except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deep to decode
                problems.append("config must be a JSON document encoded as a string")
    _raise(problems, "invalid_entitlement")


MAX_EXPIRATION = {"HOUR": 876_600, "DAY": 36_525, "WEEK": 5_218, "MONTH": 1_200, "YEAR": 100}
"""Longest grant expiration per unit: 100 years."""


def validate_grant(inp: GrantInput) -> None:
    problems = []
    if not inp.amount.is_finite() or inp.amount <= 0:
        problems.append("amount must be a positive number")
    if inp.effective_at.tzinfo is None:
        problems.append("effectiveAt must carry a UTC offset")
    for name, value in (("maxRolloverAmount", inp.max_rollover_amount), ("minRolloverAmount", inp.min_rollover_amount)):
        if not value.is_finite() or value < 0:
            problems.append(f"{name} must be a non-negative number")
    if not 0 <= inp.priority <= 255:
        problems.append("priority must be between 0 and 255")
    if inp.recurrence is not None and (problem := _recurrence_problem(inp)):
        problems.append(problem)
    duration, count = inp.expiration.get("duration"), inp.expiration.get("count")
    if not isinstance(duration, str) or duration not in MAX_EXPIRATION or type(count) is not int or count < 1:
        problems.append("expiration must be {duration: HOUR|DAY|WEEK|MONTH|YEAR, count: positive integer}")
    elif count > MAX_EXPIRATION[duration]:
        problems.append(f"expiration may be at most 100 years ({MAX_EXPIRATION[duration]} {duration})")
    _raise(problems, "invalid_grant")


HOUR_US = 3_600_000_000


def _recurrence_problem(inp: GrantInput) -> str | None:
    """A grant recurs every ``recurrence.interval`` (at least an hour, as OpenMeter's usage
    periods) from its anchor (default ``effectiveAt``), in UTC."""
    assert inp.recurrence is not None
    anchor = inp.recurrence.anchor or inp.effective_at
    if anchor.tzinfo is None:
        return "recurrence.anchor must carry a UTC offset"
    try:
        period = recurrence(inp.recurrence.interval, anchor, "UTC").period_at(anchor)
    except (InvalidInput, OverflowError, ValueError):
        return "recurrence.interval must be DAY, WEEK, MONTH, YEAR or an ISO-8601 duration of at least an hour"
    if period.end_us - period.start_us < HOUR_US:
        return "recurrence.interval must be at least an hour"
    return None


MEASURE_PRESETS = ("CURRENT_PERIOD_START", "NOW")


def measure_from_time(value: Any) -> datetime | None:
    """A ``measureUsageFrom`` date-time (with its UTC offset), or None when it is not one."""
    if not isinstance(value, str) or value in MEASURE_PRESETS:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None and 1 < t.year < 9999 else None


def _measure_from_ok(value: Any) -> bool:
    return value is None or value in MEASURE_PRESETS or measure_from_time(value) is not None


def _raise(problems: list[str], code: str) -> None:
    if problems:
        raise InvalidInput("; ".join(problems), code=code, problems=problems)
