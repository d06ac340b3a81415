"""Alert rules (domain.alerts.rules), directly: threshold levels of every type, upward
crossings only, projections and anomaly factors, validation as data."""

from __future__ import annotations

from decimal import Decimal

import pytest

from meterline.domain.alerts.rules import (
    Rule,
    RuleInput,
    Threshold,
    anomaly,
    crossed,
    fires,
    level,
    projected_over,
    validate_rule,
)
from meterline.domain.errors import InvalidInput

D = Decimal


def rule(**spec: object) -> Rule:
    inp = RuleInput(**{"type": "entitlements.balance.threshold", "name": "r", "channels": ["c"], **spec})  # type: ignore[arg-type]
    return Rule("rule-1", "default", inp, 0, 0)


@pytest.mark.parametrize(
    ("threshold", "allowance", "expected"),
    [
        (Threshold(D(80), "PERCENT"), D(1000), D(800)),
        (Threshold(D("33.3"), "usage_percentage"), D(3), D("0.999")),
        (Threshold(D(80), "PERCENT"), D(0), None),
        (Threshold(D(250), "NUMBER"), D(0), D(250)),
        (Threshold(D("0.000000000000000001"), "usage_value"), D(5), D("0.000000000000000001")),
        (Threshold(D(100), "balance_value"), D(1000), D(900)),
        (Threshold(D(100), "balance_value"), D(0), None),
    ],
)
def test_level_of_each_threshold_type(threshold: Threshold, allowance: Decimal, expected: Decimal | None) -> None:
    assert level(threshold, allowance) == expected


def test_crossed_counts_only_upward_moves_that_reach_the_level() -> None:
    r = rule(thresholds=[Threshold(D(50), "PERCENT"), Threshold(D(100), "PERCENT"), Threshold(D(70), "NUMBER")])
    assert [t.key for t in crossed(r, D(0), D(49.99), D(100))] == []
    assert [t.key for t in crossed(r, D(0), D(50), D(100))] == ["PERCENT:50"]
    assert [t.key for t in crossed(r, D(50), D(100), D(100))] == ["PERCENT:100", "NUMBER:70"]
    assert crossed(r, D(100), D(60), D(100)) == []  # usage going down never fires
    assert crossed(r, D(50), D(50), D(100)) == []  # standing at a level is not crossing it again


def test_fires_each_reached_threshold_or_an_over_running_projection_by_rule_type() -> None:
    thresholds = rule(thresholds=[Threshold(D(50), "PERCENT"), Threshold(D(70), "NUMBER")])
    reached = lambda t: t.key == "NUMBER:70"  # noqa: E731
    assert fires(thresholds, reached, D(500), D(100), (0, 100), 90) == [("NUMBER:70", Threshold(D(70), "NUMBER"))]
    assert fires(thresholds, lambda t: False, D(500), D(100), (0, 100), 90) == []
    projected = rule(type="entitlements.usage.projected", min_elapsed_percent=D(25))
    assert fires(projected, reached, D(200), D(100), (1000, 1100), 1025) == [("projected", None)]
    assert fires(projected, reached, D(200), D(100), (1000, 1100), 1024) == []  # 24 % of the period elapsed
    assert fires(projected, reached, None, D(100), (1000, 1100), 1090) == []  # no projection yet
    assert fires(projected, reached, D(100), D(100), (1000, 1100), 1090) == []  # not over the allowance
    spikes = rule(type="entitlements.usage.anomaly", spike_factor=D(2))
    assert fires(spikes, reached, D(200), D(100), (0, 100), 90) == []  # scanned hourly, not here


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


def test_rules_cover_features_by_id_or_key_unless_disabled() -> None:
    assert rule().covers("f1", "tokens")
    assert rule(features=["tokens"]).covers("f1", "tokens")
    assert rule(features=["f1"]).covers("f1", "tokens")
    assert not rule(features=["other"]).covers("f1", "tokens")
    assert not rule(disabled=True).covers("f1", "tokens")
