"""Notification rules and the pure decisions of when one fires.

Rule types (OpenMeter's name first, then ours):

- ``entitlements.balance.threshold``: thresholds on a metered entitlement's value (the balance
  snapshot ``GET .../value`` answers), evaluated as OpenMeter's notification consumer does
  (``openmeter/notification/consumer/entitlementbalancethreshold.go``): ``PERCENT`` /
  ``usage_percentage`` of ``totalAvailableGrantAmount`` used, ``NUMBER`` / ``usage_value`` of
  usage, ``balance_value`` of the balance left. Of the thresholds reached now, the highest usage
  one and the lowest balance one are *active*; each fires when it differs from the last one of
  its kind that fired for the rule, entitlement and period (:func:`active`, :func:`next_key`).
- ``entitlements.usage.projected``: usage projected linearly to the end of the period exceeds
  the allowance (checked once ``minElapsedPercent`` of the period has passed).
- ``entitlements.usage.anomaly``: the last complete hour's usage against the customer's own
  hourly mean over the baseline days: above ``spikeFactor`` times the mean, or below
  ``dropFactor`` times the mean (only when the mean is at least ``minBaseline``).

Every firing has a key (the threshold, ``projected``, ``spike``, ``drop``) and a period start;
storage keeps one event per (rule, customer, feature, key, period start), so an alert fires once
however often usage is retried or the process restarts. A threshold that fires again in the
same period (OpenMeter re-fires a threshold once another one of its kind fired after it) gets
its place in the series as a suffix (``PERCENT:80#2``), so that repeat has a key of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Literal, get_args

import msgspec

from meterline.domain.decimals import EXACT
from meterline.domain.entitlements.value import Value
from meterline.domain.errors import InvalidInput, NotSupported
from meterline.domain.identifiers import name_problem

RuleType = Literal["entitlements.balance.threshold", "entitlements.usage.projected", "entitlements.usage.anomaly"]
OPENMETER_ONLY = ("entitlements.reset", "invoice.created", "invoice.updated")
"""Rule types of OpenMeter's API that meterline does not build: asked for, they answer 501
``not_supported`` naming the type (:func:`refuse_openmeter_only`), not 400 as a typo would."""
ThresholdType = Literal["PERCENT", "NUMBER", "usage_percentage", "usage_value", "balance_value"]
HUNDRED = Decimal(100)
ZERO = Decimal(0)


class RuleTypeNotSupported(NotSupported):
    title = "Not supported"


class _Typed(msgspec.Struct, frozen=True):
    type: object = None


def refuse_openmeter_only(body: bytes) -> None:
    """Raise 501 ``not_supported`` (naming it in ``ruleType``) when the JSON ``body`` asks for a
    rule type of OpenMeter's that meterline does not build; anything else is left to the
    rule's own validation."""
    try:
        kind = msgspec.json.decode(body, type=_Typed).type
    except msgspec.DecodeError:
        return
    if isinstance(kind, str) and kind in OPENMETER_ONLY:
        built = ", ".join(get_args(RuleType))
        raise RuleTypeNotSupported(
            f"notification rule type {kind!r} is part of OpenMeter's API that meterline does not build "
            f"(it builds {built})",
            ruleType=kind,
        )


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
        for t in inp.thresholds:  # OpenMeter's rule: usage thresholds above 0, balance ones from 0
            if not t.value.is_finite() or t.value < 0 or (t.value == 0 and kind_of(t) == "usage"):
                problems.append(f"threshold {t.type} {t.value} must be a number above 0 (balance_value: from 0)")
        if inp.features and len(set(inp.features)) != len(inp.features):
            problems.append("features must not repeat")
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


ThresholdKind = Literal["usage", "balance"]


def kind_of(t: Threshold) -> ThresholdKind:
    """OpenMeter's two kinds: ``balance_value`` watches the balance, the rest the usage."""
    return "balance" if t.type == "balance_value" else "usage"


def _usage_level(t: Threshold, total: Decimal) -> Decimal:
    """The usage a usage-kind threshold stands for (percentages: of ``total``)."""
    if t.type in ("PERCENT", "usage_percentage"):
        return EXACT.divide(EXACT.multiply(total, t.value), HUNDRED)
    return t.value


def _reached(t: Threshold, usage: Decimal, balance: Decimal, total: Decimal) -> bool:
    """OpenMeter's ``getNumericThreshold``: usage above the level (strictly), balance below the
    value (strictly; a 0 threshold at a balance of 0)."""
    if kind_of(t) == "usage":
        return _usage_level(t, total) < usage
    return t.value > balance if t.value != 0 else balance <= 0


def active(
    thresholds: Sequence[Threshold], usage: Decimal, balance: Decimal, overage: Decimal, total: Decimal
) -> list[Threshold]:
    """The thresholds that fire for a value (``total``: its ``totalAvailableGrantAmount``), as
    OpenMeter's ``getActiveThresholdsWithHighestPriority``: of those reached, the usage one with
    the highest level (a later percentage wins a tie, a later number does not) and the balance
    one with the lowest value (the first wins a tie). Nothing without grants (``total`` 0), or
    for a value with both a balance and an overage (OpenMeter refuses such a value)."""
    if total == 0 or (balance > 0 and overage > 0):
        return []
    top: Threshold | None = None
    top_level = ZERO
    low: Threshold | None = None
    for t in thresholds:
        if not _reached(t, usage, balance, total):
            continue
        if kind_of(t) == "balance":
            if low is None or t.value < low.value:
                low = t
            continue
        at = _usage_level(t, total)
        percent = t.type in ("PERCENT", "usage_percentage")
        if top is None or top_level < at or (percent and top_level == at):
            top, top_level = t, at
    return [t for t in (top, low) if t is not None]


def headroom(thresholds: Sequence[Threshold], usage: Decimal, balance: Decimal, total: Decimal) -> Decimal | None:
    """The usage below which :func:`active` answers as it does at ``usage``, while ``total``
    stays and more usage burns ``balance`` one for one (no grant starts, ends or recurs): the
    lowest level not reached yet (None: none is left)."""
    if total == 0:
        return None
    found: Decimal | None = None
    for t in thresholds:
        if _reached(t, usage, balance, total):
            continue
        if kind_of(t) == "usage":
            at = _usage_level(t, total)
        else:
            at = EXACT.add(usage, EXACT.subtract(balance, t.value))
        found = at if found is None or at < found else found
    return found


def threshold_of(key: str) -> Threshold | None:
    """The threshold a fired key names (``PERCENT:80`` or ``PERCENT:80#2``); None for other keys."""
    kind, sep, rest = key.partition(":")
    if not sep or kind not in ("PERCENT", "NUMBER", "usage_percentage", "usage_value", "balance_value"):
        return None
    try:
        return Threshold(Decimal(rest.partition("#")[0]), kind)  # type: ignore[arg-type]
    except ArithmeticError:
        return None


def next_key(t: Threshold, fired: Sequence[str]) -> str | None:
    """The key ``t`` fires under, given the keys ``fired`` already for the same rule,
    entitlement and period (oldest first), or None when it must not fire: OpenMeter sends a new
    event only when the last one of the same kind was for another threshold (or there is none).
    A repeat is keyed by its place among the events of its kind."""
    mine = [k for k in fired if (f := threshold_of(k)) is not None and kind_of(f) == kind_of(t)]
    if mine and threshold_of(mine[-1]) == t:
        return None
    return t.key if not mine else f"{t.key}#{len(mine)}"


def projected_over(rule: Rule, projected: Decimal, allowance: Decimal, elapsed_fraction: Decimal) -> bool:
    return allowance > 0 and elapsed_fraction * HUNDRED >= rule.spec.min_elapsed_percent and projected > allowance


THRESHOLD_RULE = "entitlements.balance.threshold"
PROJECTED_RULE = "entitlements.usage.projected"


def fires(
    rule: Rule, value: Value, now_us: int, fired: Callable[[], Sequence[str]]
) -> list[tuple[str, Threshold | None]]:
    """What a threshold or projection ``rule`` fires for a metered entitlement's ``value`` now,
    as (key, threshold): its :func:`active` thresholds that :func:`next_key` lets fire
    (``fired``: the keys the rule fired already for the entitlement in the value's period,
    oldest first; asked only when a threshold is active), or ``projected`` once the usage
    projected to the end of the period exceeds ``totalAvailableGrantAmount``. Other rule types
    fire nothing here (spike/drop rules: :func:`hour_anomaly`)."""
    usage, total, period = value.usage, value.allowance, value.period
    if usage is None or total is None or period is None:
        return []
    if rule.spec.type == THRESHOLD_RULE:
        found = active(rule.spec.thresholds, usage, value.balance or ZERO, value.overage or ZERO, total)
        keys = fired() if found else ()
        return [(k, t) for t in found if (k := next_key(t, keys)) is not None]
    projected = value.projected_usage
    if rule.spec.type == PROJECTED_RULE and projected is not None:
        start, end = period.start_us, period.end_us
        if projected_over(rule, projected, total, Decimal(now_us - start) / Decimal(end - start)):
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
