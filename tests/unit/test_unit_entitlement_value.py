"""Entitlement values and verdicts (domain.entitlements.value), directly: grants that count in
a period, balance and overage, soft and unlimited limits, projections, and the verdict."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from meterline.domain.clock import to_us
from meterline.domain.entitlements.model import Entitlement, EntitlementInput, Grant, GrantInput, UsagePeriodInput
from meterline.domain.entitlements.value import (
    LIMIT_EXHAUSTED,
    NO_ACCESS,
    NO_ENTITLEMENT,
    Value,
    grant_total,
    metered_value,
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


def grant(
    amount: str,
    effective: datetime,
    *,
    expires: datetime | None = None,
    voided: datetime | None = None,
    recurring: bool = False,
) -> Grant:
    spec = GrantInput(
        D(amount),
        effective,
        {"duration": "MONTH", "count": 1},
        recurrence=UsagePeriodInput(interval="MONTH") if recurring else None,
    )
    return Grant(
        "g",
        "e1",
        spec,
        to_us(effective),
        None if expires is None else to_us(expires),
        0,
        None if voided is None else to_us(voided),
    )


def test_grants_count_only_while_effective_in_the_period() -> None:
    grants = [
        grant("100", datetime(2026, 5, 2, tzinfo=UTC)),  # counts
        grant("7", datetime(2026, 5, 20, tzinfo=UTC)),  # not effective yet at mid-May
        grant("5", datetime(2026, 5, 3, tzinfo=UTC), expires=datetime(2026, 5, 10, tzinfo=UTC)),  # expired
        grant("3", datetime(2026, 5, 3, tzinfo=UTC), voided=datetime(2026, 5, 4, tzinfo=UTC)),  # voided
        grant("11", datetime(2026, 4, 3, tzinfo=UTC)),  # one-off from before the period
        grant("0.000000000000000001", datetime(2026, 4, 3, tzinfo=UTC), recurring=True),  # recurs into May
    ]
    assert grant_total(grants, MAY, MID_MAY) == D("100.000000000000000001")


@pytest.mark.parametrize(
    ("usage", "balance", "overage", "access"),
    [
        (D(0), D(150), D(0), True),
        (D("149.999"), D("0.001"), D(0), True),
        (D(150), D(0), D(0), False),
        (D("175.5"), D(0), D("25.5"), False),
    ],
)
def test_balance_and_overage(usage: Decimal, balance: Decimal, overage: Decimal, access: bool) -> None:
    value = metered_value(ent(issue_after_reset=D(100)), usage, D(50), MAY, MID_MAY)
    assert (value.allowance, value.balance, value.overage, value.has_access) == (D(150), balance, overage, access)


def test_soft_and_unlimited_keep_access() -> None:
    soft = metered_value(ent(is_soft_limit=True, issue_after_reset=D(10), soft_limit=D(8)), D(9), D(0), MAY, MID_MAY)
    assert soft.has_access and soft.soft_limit_exceeded and soft.overage == D(0)
    assert metered_value(ent(is_unlimited=True), D(10**18), D(0), MAY, MID_MAY).has_access


def test_projection_is_linear_in_elapsed_time() -> None:
    assert projection(D(100), MAY, MID_MAY) == D(200)
    assert projection(D(100), MAY, MAY.start_us) == D(100)  # nothing elapsed: no extrapolation
    assert projection(D(100), MAY, MAY.end_us + 10**9) == D(100)  # over: the whole period elapsed
    assert metered_value(ent(), D(1), D(0), MAY, MID_MAY, project=False).projected_usage is None


def test_verdict_for_missing_boolean_and_metered() -> None:
    assert verdict(None, None, D(1)).denial == NO_ENTITLEMENT
    off = Value(False)
    assert verdict(ent(type="boolean"), off, D(1)).denial == NO_ACCESS
    value = metered_value(ent(issue_after_reset=D(10)), D(9), D(0), MAY, MID_MAY)
    assert verdict(ent(issue_after_reset=D(10)), value, D(1)).allowed
    assert verdict(ent(issue_after_reset=D(10)), value, D("1.000000000000000001")).denial == LIMIT_EXHAUSTED
    assert verdict(ent(issue_after_reset=D(10)), value, D(0)).allowed  # a pure check: usage is below allowance
    full = metered_value(ent(issue_after_reset=D(10)), D(10), D(0), MAY, MID_MAY)
    assert not verdict(ent(issue_after_reset=D(10)), full, D(0)).allowed
