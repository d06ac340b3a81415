"""Notification rules and the pure decisions of when one fires.

Rule types (OpenMeter's name first, then ours):

- ``entitlements.balance.threshold``: thresholds on a metered entitlement's usage in the
  current period, as a percentage of its allowance (``PERCENT``/``usage_percentage``), as
  absolute usage (``NUMBER``/``usage_value``) or as remaining balance (``balance_value``). A
  threshold fires when usage crosses it upward.
- ``entitlements.usage.projected``: usage projected linearly to the end of the period exceeds
  the allowance (checked once ``minElapsedPercent`` of the period has passed).
- ``entitlements.usage.anomaly``: the last complete hour's usage against the customer's own
  hourly mean over the baseline days: above ``spikeFactor`` times the mean, or below
  ``dropFactor`` times the mean (only when the mean is at least ``minBaseline``).

Every firing has a key (the threshold, ``projected``, ``spike``, ``drop``) and a period start;
storage keeps one event per (rule, customer, feature, key, period start), so an alert fires once
per period however often usage is retried or the process restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Literal

import msgspec

from meterline.domain.decimals import EXACT
from meterline.domain.errors import InvalidInput
from meterline.domain.identifiers import name_problem

RuleType = Literal["entitlements.balance.threshold", "entitlements.usage.projected", "entitlements.usage.anomaly"]
ThresholdType = Literal["PERCENT", "NUMBER", "usage_percentage", "usage_value", "balance_value"]
HUNDRED = Decimal(100)


class Threshold(msgspec.Struct, frozen=True):
    value: Decimal
    type: ThresholdType

    @property
    def key(self) -> str:
        return f"{self.type}:{self.value}"


class RuleInput(msgspec.Struct, frozen=True, rename="camel"):
    type: RuleType
    name: str
    channels: list[str]
    disabled: bool = False
    metadata: dict[str, str] | None = None
    features: list[str] | None = None
    thresholds: list[Threshold] = []
    min_elapsed_percent: Decimal = Decimal(10)
    spike_factor: Decimal | None = None
    drop_factor: Decimal | None = None
    min_baseline: Decimal = Decimal(1)


class Rule(msgspec.Struct, frozen=True):
    id: str
    namespace: str
    spec: RuleInput
    created_us: int
    updated_us: int

    def covers(self, feature_id: str, feature_key: str) -> bool:
        f = self.spec.features
        return not self.spec.disabled and (not f or feature_id in f or feature_key in f)


def validate_rule(inp: RuleInput) -> None:
    problems = []
    if problem := name_problem("name", inp.name):
        problems.append(problem)
    if not inp.channels:
        problems.append("at least one channel is required")
    if inp.type == "entitlements.balance.threshold":
        if not inp.thresholds:
            problems.append("a balance threshold rule needs at least one threshold")
        for t in inp.thresholds:
            if not t.value.is_finite() or t.value < 0:
                problems.append(f"threshold {t.value} must be a non-negative number")
    if inp.type == "entitlements.usage.anomaly":
        if inp.spike_factor is None and inp.drop_factor is None:
            problems.append("an anomaly rule needs spikeFactor (> 1) and/or dropFactor (< 1)")
        if inp.spike_factor is not None and inp.spike_factor <= 1:
            problems.append("spikeFactor must be greater than 1")
        if inp.drop_factor is not None and not 0 <= inp.drop_factor < 1:
            problems.append("dropFactor must be at least 0 and below 1")
    if not 0 <= inp.min_elapsed_percent <= 100:
        problems.append("minElapsedPercent must be between 0 and 100")
    if problems:
        raise InvalidInput("; ".join(problems), code="invalid_rule", problems=problems)


def level(t: Threshold, allowance: Decimal) -> Decimal | None:
    """The usage at which ``t`` is reached (None when it cannot be: no allowance)."""
    if t.type in ("PERCENT", "usage_percentage"):
        return None if allowance <= 0 else EXACT.multiply(allowance, t.value) / HUNDRED
    if t.type == "balance_value":
        return None if allowance <= 0 else EXACT.subtract(allowance, t.value)
    return t.value


def crossed(rule: Rule, before: Decimal, after: Decimal, allowance: Decimal) -> list[Threshold]:
    """Thresholds that usage moving from ``before`` to ``after`` crossed upward."""
    out = []
    for t in rule.spec.thresholds:
        at = level(t, allowance)
        if at is not None and before < at <= after:
            out.append(t)
    return out


def projected_over(rule: Rule, projected: Decimal, allowance: Decimal, elapsed_fraction: Decimal) -> bool:
    return allowance > 0 and elapsed_fraction * HUNDRED >= rule.spec.min_elapsed_percent and projected > allowance


THRESHOLD_RULE = "entitlements.balance.threshold"
PROJECTED_RULE = "entitlements.usage.projected"


def fires(
    rule: Rule,
    reached: Callable[[Threshold], bool],
    projected: Decimal | None,
    allowance: Decimal,
    period: tuple[int, int],
    now_us: int,
) -> list[tuple[str, Threshold | None]]:
    """What a threshold or projection ``rule`` fires for an entitlement now, as (key, threshold):
    each of its thresholds that ``reached`` says usage reached, or ``projected`` (usage projected
    to the end of ``period``, start and end in microseconds) once it exceeds the allowance.
    Other rule types fire nothing here (spike/drop rules: :func:`hour_anomaly`)."""
    if rule.spec.type == THRESHOLD_RULE:
        return [(t.key, t) for t in rule.spec.thresholds if reached(t)]
    if rule.spec.type == PROJECTED_RULE and projected is not None:
        start, end = period
        if projected_over(rule, projected, allowance, Decimal(now_us - start) / Decimal(end - start)):
            return [("projected", None)]
    return []


def anomaly(rule: Rule, last_hour: Decimal, baseline_mean: Decimal) -> Literal["spike", "drop"] | None:
    s = rule.spec
    if baseline_mean < s.min_baseline:
        return None
    if s.spike_factor is not None and last_hour > EXACT.multiply(baseline_mean, s.spike_factor):
        return "spike"
    if s.drop_factor is not None and last_hour < EXACT.multiply(baseline_mean, s.drop_factor):
        return "drop"
    return None


HOUR_US = 3_600_000_000


def hour_anomaly(
    rule: Rule, windows: Sequence[tuple[int, int, Decimal]], hour_start_us: int, baseline_days: int
) -> tuple[Literal["spike", "drop"], Decimal, Decimal] | None:
    """An anomaly rule's verdict on the hour that starts at ``hour_start_us``, from hourly
    usage ``windows`` (start, end, usage) covering the ``baseline_days`` before it and the hour
    itself: (kind, the hour's usage, the baseline's hourly mean), or None."""
    last = sum((v for s, _, v in windows if s == hour_start_us), Decimal(0))
    base = sum((v for s, _, v in windows if s < hour_start_us), Decimal(0))
    mean = base / Decimal(baseline_days * 24)
    kind = anomaly(rule, last, mean)
    return None if kind is None else (kind, last, mean)
