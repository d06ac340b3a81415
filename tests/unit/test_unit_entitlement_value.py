"""Entitlement values and verdicts (domain.entitlements.value), directly: projections and the
verdict (balances and overage come from the credit engine: test_unit_credit*.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from meterline.domain.clock import to_us
from meterline.domain.entitlements.model import Entitlement, EntitlementInput
from meterline.domain.entitlements.value import (
    LIMIT_EXHAUSTED,
    NO_ACCESS,
    NO_ENTITLEMENT,
    Value,
    projection,
    verdict,
)
from meterline.domain.periods import Period

D = Decimal
MAY = Period(datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC))
MID_MAY = to_us(datetime(2026, 5, 16, 12, tzinfo=UTC))


def ent(**spec: object) -> Entitlement:
    inp = EntitlementInput(**{"type": "metered", "feature_key": "tokens", **spec})  # type: ignore[arg-type]
    return Entitlement("e1", "default", "c1", "acme", "f1", "tokens", inp, 0, 0, 0)


def test_projection_is_linear_in_elapsed_time() -> None:
    assert projection(D(100), MAY, MID_MAY) == D(200)
    assert projection(D(100), MAY, MAY.start_us) == D(100)  # nothing elapsed: no extrapolation
    assert projection(D(100), MAY, MAY.end_us + 10**9) == D(100)  # over: the whole period elapsed


def test_verdict_for_missing_boolean_and_metered() -> None:
    assert verdict(None, None, D(1)).denial == NO_ENTITLEMENT
    off = Value(False)
    assert verdict(ent(type="boolean"), off, D(1)).denial == NO_ACCESS
    value = Value(True, D(9), D(10), D(1), D(0), period=MAY)
    assert verdict(ent(issue_after_reset=D(10)), value, D(1)).allowed
    assert verdict(ent(issue_after_reset=D(10)), value, D("1.000000000000000001")).denial == LIMIT_EXHAUSTED
    assert verdict(ent(issue_after_reset=D(10)), value, D(0)).allowed  # a pure check: usage is below allowance
    full = Value(False, D(10), D(10), D(0), D(0), period=MAY)
    assert not verdict(ent(issue_after_reset=D(10)), full, D(0)).allowed
    assert verdict(ent(is_soft_limit=True, issue_after_reset=D(10)), full, D(5)).allowed
    assert verdict(ent(is_unlimited=True), full, D(10**18)).allowed
