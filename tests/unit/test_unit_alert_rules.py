"""Alert rules (domain.alerts.rules), directly: which thresholds are active for a value (the
cases of OpenMeter's ``Test_GetActiveThresholdsWithHighestPriority``), when one fires again in
a period, the usage below which nothing changes, projections and anomaly factors, validation
as data."""

from __future__ import annotations

from decimal import Decimal

import pytest

from meterline.domain.alerts.rules import (
    Rule,
    RuleInput,
    Threshold,
    active,
    anomaly,
    fires,
    headroom,
    next_key,
    projected_over,
    threshold_of,
    validate_rule,
)
from meterline.domain.entitlements.value import Value
from meterline.domain.errors import InvalidInput
from meterline.domain.periods import Period

D = Decimal


def rule(**spec: object) -> Rule:
    inp = RuleInput(**{"type": "entitlements.balance.threshold", "name": "r", "channels": ["c"], **spec})  # type: ignore[arg-type]
    return Rule("rule-1", "default", inp, 0, 0)


def num(v: float) -> Threshold:
    return Threshold(D(str(v)), "NUMBER")


def pct(v: float) -> Threshold:
    return Threshold(D(str(v)), "PERCENT")


def uval(v: float) -> Threshold:
    return Threshold(D(str(v)), "usage_value")


def upct(v: float) -> Threshold:
    return Threshold(D(str(v)), "usage_percentage")


def bal(v: float) -> Threshold:
    return Threshold(D(str(v)), "balance_value")


# (thresholds, (balance, usage, overage, totalAvailableGrantAmount), expected): OpenMeter's cases
OPENMETER_CASES = [
    ([num(20), num(10), num(30)], (5, 25, 0, 30), [num(20)]),
    ([uval(20), uval(10), uval(30)], (5, 25, 0, 30), [uval(20)]),
    ([num(20), num(10), num(30)], (0, 35, 0, 35), [num(30)]),
    ([num(20), num(10), num(30)], (0, 35, 10, 25), [num(30)]),
    ([pct(50), pct(100), pct(110), pct(120)], (0, 110, 15, 95), [pct(110)]),
    ([upct(50), upct(100), upct(110), upct(120)], (0, 110, 15, 95), [upct(110)]),
    ([upct(50), upct(100), upct(110), upct(120)], (0, 0, 0, 100), []),
    ([upct(50), upct(100), upct(110), upct(120)], (0, 100, 0, 0), []),  # no grants
    ([num(20), num(10), num(30), pct(50)], (14, 16, 0, 30), [pct(50)]),
    ([num(20), pct(100)], (0, 0, 0, 0), []),
    ([num(20)], (0, 30, 0, 30), [num(20)]),
    ([num(15), pct(50)], (14, 16, 0, 30), [pct(50)]),  # same level: the percentage wins
    ([num(15), pct(50)], (15, 15, 0, 30), []),  # strictly above
    ([uval(15), pct(50), upct(50)], (14, 16, 0, 30), [upct(50)]),
    ([bal(20), bal(10), bal(30)], (15, 15, 0, 30), [bal(20)]),
    ([bal(20), bal(10), bal(30)], (25, 0, 0, 25), [bal(30)]),
    ([bal(20), bal(10), bal(0)], (0, 30, 0, 30), [bal(0)]),
    ([bal(10), uval(20)], (5, 25, 0, 30), [uval(20), bal(10)]),
    ([bal(10), upct(90)], (5, 95, 0, 100), [upct(90), bal(10)]),
    ([bal(10), upct(90)], (0, 0, 0, 0), []),
    ([], (5, 25, 0, 30), []),
    ([bal(15)], (15, 15, 0, 30), []),
    ([bal(10), uval(20), upct(80)], (5, 25, 0, 30), [upct(80), bal(10)]),
    ([uval(50), uval(100), upct(90)], (90, 10, 0, 100), []),
    ([upct(50), upct(100), upct(150)], (10, 90, 0, 100), [upct(50)]),
    ([bal(20), bal(10), bal(5)], (0, 30, 10, 20), [bal(5)]),
    ([uval(20)], (10, 25, 5, 30), []),  # a balance and an overage at once: OpenMeter refuses the value
]


@pytest.mark.parametrize(("thresholds", "value", "expected"), OPENMETER_CASES)
def test_active_thresholds_as_openmeter_picks_them(
    thresholds: list[Threshold], value: tuple[int, int, int, int], expected: list[Threshold]
) -> None:
    balance, usage, overage, total = (D(v) for v in value)
    assert active(thresholds, usage, balance, overage, total) == expected


def test_a_threshold_fires_again_only_after_another_of_its_kind_fired() -> None:
    assert next_key(pct(80), []) == "PERCENT:80"
    assert next_key(pct(80), ["PERCENT:80"]) is None
    assert next_key(pct(50), ["PERCENT:80"]) == "PERCENT:50#1"  # a grant lowered the percentage used
    assert next_key(pct(80), ["PERCENT:80", "PERCENT:50#1"]) == "PERCENT:80#2"
    assert next_key(bal(10), ["PERCENT:80"]) == "balance_value:10"  # kinds are separate series
    assert next_key(upct(80), ["PERCENT:80"]) == "usage_percentage:80#1"  # another type is another threshold
    assert next_key(pct(80), ["projected", "PERCENT:80#3"]) is None
    assert threshold_of("PERCENT:80#2") == pct(80)
    assert threshold_of("projected") is None and threshold_of("test:01J") is None


def test_headroom_is_the_usage_where_the_answer_can_change() -> None:
    thresholds = [pct(50), num(90), bal(20), bal(0)]
    assert headroom(thresholds, D(10), D(90), D(100)) == D(50)
    assert headroom(thresholds, D(60), D(40), D(100)) == D(80)  # balance 20 is left at usage 80
    assert headroom(thresholds, D(85), D(15), D(100)) == D(90)
    assert headroom(thresholds, D(95), D(5), D(100)) == D(100)  # balance 0 at usage 100
    assert headroom(thresholds, D(100), D(0), D(100)) is None
    assert headroom(thresholds, D(10), D(0), D(0)) is None  # no grants: nothing fires


def period() -> Period:
    from datetime import UTC, datetime

    return Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))


def value(usage: int, balance: int, total: int, projected: int | None = None) -> Value:
    return Value(
        True,
        D(usage),
        D(total),
        D(balance),
        D(0),
        projected_usage=None if projected is None else D(projected),
        period=period(),
    )


def test_fires_reads_the_fired_keys_only_when_a_threshold_is_active() -> None:
    r = rule(thresholds=[pct(50), num(70)])
    asked: list[int] = []

    def fired() -> list[str]:
        asked.append(1)
        return ["PERCENT:50"]

    assert fires(r, value(40, 60, 100), 0, fired) == [] and not asked
    assert fires(r, value(60, 40, 100), 0, fired) == [] and asked  # 50 % fired last
    assert fires(r, value(75, 25, 100), 0, fired) == [("NUMBER:70#1", num(70))]
    p = period()
    projected = rule(type="entitlements.usage.projected", min_elapsed_percent=D(25))
    quarter = p.start_us + (p.end_us - p.start_us) // 4
    assert fires(projected, value(60, 40, 100, 200), quarter, fired) == [("projected", None)]
    assert fires(projected, value(60, 40, 100, 200), quarter - 1, fired) == []
    assert fires(projected, value(60, 40, 100, 100), quarter, fired) == []  # not over the total
    spikes = rule(type="entitlements.usage.anomaly", spike_factor=D(2))
    assert fires(spikes, value(60, 40, 100, 500), quarter, fired) == []  # scanned hourly, not here


def test_projection_needs_enough_elapsed_time_and_an_allowance() -> None:
    r = rule(type="entitlements.usage.projected", min_elapsed_percent=D(25))
    assert not projected_over(r, D(200), D(100), D("0.2"))
    assert projected_over(r, D(200), D(100), D("0.25"))
    assert not projected_over(r, D(100), D(100), D("0.9"))
    assert not projected_over(r, D(200), D(0), D("0.9"))


def test_anomaly_spike_drop_and_small_baselines() -> None:
    r = rule(type="entitlements.usage.anomaly", spike_factor=D(3), drop_factor=D("0.5"), min_baseline=D(10))
    assert anomaly(r, D(31), D(10)) == "spike"
    assert anomaly(r, D(30), D(10)) is None
    assert anomaly(r, D("4.99"), D(10)) == "drop"
    assert anomaly(r, D(0), D("9.99")) is None  # baseline too small to judge


def test_validation_returns_every_problem() -> None:
    bad = RuleInput(
        type="entitlements.usage.anomaly",
        name="",
        channels=[],
        spike_factor=D(1),
        drop_factor=D(1),
        min_elapsed_percent=D(101),
    )
    with pytest.raises(InvalidInput) as err:
        validate_rule(bad)
    assert err.value.code == "invalid_rule"
    problems = err.value.extra["problems"]
    assert len(problems) == 5
    assert "at least one channel is required" in problems


def test_threshold_values_as_openmeter_validates_them() -> None:
    for bad in ([pct(0)], [num(0)], [bal(-1)], [pct(50), Threshold(D("NaN"), "NUMBER")]):
        with pytest.raises(InvalidInput):
            validate_rule(rule(thresholds=bad).spec)
    validate_rule(rule(thresholds=[bal(0), upct("0.5")]).spec)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        validate_rule(rule(thresholds=[pct(80)], features=["a", "a"]).spec)


def test_rules_cover_features_by_id_or_key_unless_disabled() -> None:
    assert rule().covers("f1", "tokens")
    assert rule(features=["tokens"]).covers("f1", "tokens")
    assert rule(features=["f1"]).covers("f1", "tokens")
    assert not rule(features=["other"]).covers("f1", "tokens")
    assert not rule(disabled=True).covers("f1", "tokens")
