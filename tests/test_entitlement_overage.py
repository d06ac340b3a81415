"""OpenMeter's ``preserveOverageAtReset`` and ``measureUsageFrom`` as pure rules: the overage a
period inherits across resets, the value and verdict that use it, where measuring starts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest

from meterline.domain.clock import from_us, to_us
from meterline.domain.entitlements.model import (
    Entitlement,
    EntitlementInput,
    Grant,
    GrantInput,
    UsagePeriodInput,
    validate_entitlement,
)
from meterline.domain.entitlements.rules import measured_from_us, reset
from meterline.domain.entitlements.value import verdict
from meterline.domain.errors import InvalidInput
from meterline.domain.periods import recurrence
from meterline.services.entitlement_balances import Burndown, StartCache

HOUR = 3_600_000_000
MINUTE = 60_000_000
A = to_us(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))  # the anchor: hourly periods from 09:00
USAGE = {A: Decimal("7"), A + HOUR: Decimal("4"), A + 2 * HOUR: Decimal("6.5")}  # by period start


def entitlement(preserve: bool, last_reset: int = A, carried: Decimal = Decimal(0)) -> Entitlement:
    spec = EntitlementInput(
        "metered", "f", usage_period=UsagePeriodInput("PT1H"), issue_after_reset=Decimal(5),
        preserve_overage_at_reset=preserve,
    )  # fmt: skip
    return Entitlement("e", "ns", "c", "c", "f", "f", spec, A, last_reset, A, reset_overage=carried)


def rollups(usage: dict[int, Decimal]):  # type: ignore[no-untyped-def]
    """Usage of [a, b): each amount counted at its instant."""
    return lambda a, b: sum((v for t, v in usage.items() if a <= t < b), Decimal(0))


def burndown(ent: Entitlement) -> Burndown:
    return Burndown(ent, [], recurrence("PT1H", from_us(ent.anchor_us), "UTC"), StartCache())


def carried(ent: Entitlement, start: int) -> Decimal:
    bd = burndown(ent)
    return bd.start_of(bd.period_at(start), rollups(USAGE)).carried


def test_overage_carries_from_period_to_period_when_preserved() -> None:
    ent = entitlement(preserve=True)
    assert carried(ent, A) == 0  # the first period inherits nothing
    assert carried(ent, A + HOUR) == 2  # 7 used of 5
    assert carried(ent, A + 2 * HOUR) == 1  # 2 carried (burnt from the 5 issued) + 4 used of 5
    assert carried(ent, A + 3 * HOUR) == Decimal("2.5")  # 1 + 6.5 of 5
    assert carried(entitlement(preserve=False), A + 2 * HOUR) == 0


def test_the_carried_overage_burns_the_issued_grant_first() -> None:
    ent = entitlement(preserve=True)
    now = A + 2 * HOUR + MINUTE
    value = burndown(ent).value(now, rollups({**USAGE, A + 2 * HOUR: Decimal("2.5")}))
    assert (value.usage, value.allowance, value.balance, value.overage) == (Decimal("2.5"), 5, Decimal("1.5"), 0)
    assert verdict(ent, value, Decimal("1.5")).allowed and not verdict(ent, value, Decimal("1.6")).allowed
    over = burndown(ent).value(now, rollups(USAGE))
    assert (over.balance, over.overage, over.has_access) == (0, Decimal("2.5"), False)


def test_a_reset_that_preserves_overage_starts_the_next_period_with_it() -> None:
    ent = reset(entitlement(preserve=False), A + 2 * HOUR + 30 * MINUTE, False, A + 3 * HOUR, Decimal("2.5"))
    assert (ent.last_reset_us, ent.anchor_us, ent.reset_overage) == (A + 150 * MINUTE, A + 150 * MINUTE, 2.5)
    assert carried(ent, A + 150 * MINUTE) == Decimal("2.5")  # into the period the reset starts
    assert carried(ent, A + 210 * MINUTE) == 0  # not preserving: the next reset starts from zero


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, A + 2 * HOUR + 30 * MINUTE),  # OpenMeter's default: now
        ("NOW", A + 2 * HOUR + 30 * MINUTE),
        ("CURRENT_PERIOD_START", A + 2 * HOUR),
        ("2026-03-01T09:30:45Z", A + 30 * MINUTE),
        ("2026-03-01T14:30:00+05:30", A),
    ],
)
def test_measure_usage_from(given: str | None, expected: int) -> None:
    inp = EntitlementInput("metered", "f", usage_period=UsagePeriodInput("PT1H"), measure_usage_from=given)
    validate_entitlement(inp)
    assert measured_from_us(inp, A, "UTC", A + 2 * HOUR + 30 * MINUTE + 5_000_000) == expected


@pytest.mark.parametrize("given", ["LATER", "2026-03-01T09:30:00", 7, {"at": "NOW"}])
def test_a_bad_measure_usage_from_is_refused(given: object) -> None:
    inp = EntitlementInput("metered", "f", usage_period=UsagePeriodInput("PT1H"), measure_usage_from=given)
    with pytest.raises(InvalidInput):
        validate_entitlement(inp)
    with pytest.raises(InvalidInput):
        validate_entitlement(msgspec.structs.replace(inp, type="boolean", measure_usage_from="NOW"))


def test_a_measure_usage_from_in_the_future_is_refused() -> None:
    inp = EntitlementInput(
        "metered", "f", usage_period=UsagePeriodInput("PT1H"), measure_usage_from="2026-03-01T12:00:00Z"
    )
    with pytest.raises(InvalidInput):
        measured_from_us(inp, A, "UTC", A + HOUR)


def test_grants_roll_over_at_each_period_boundary_between_min_and_max() -> None:
    """Hourly periods from A; a grant of 10 keeping at most 4 and at least 1, a daily-recurring
    grant of 2 (priority 2: burnt after it), used 7, 4 and 6.5 in three periods."""
    ent = entitlement(preserve=False)
    ent = msgspec.structs.replace(ent, spec=msgspec.structs.replace(ent.spec, issue_after_reset=None))
    kept = GrantInput(Decimal(10), from_us(A), {"duration": "DAY", "count": 1}, priority=1,
                      max_rollover_amount=Decimal(4), min_rollover_amount=Decimal(1))  # fmt: skip
    daily = GrantInput(Decimal(2), from_us(A), {"duration": "DAY", "count": 1}, priority=2,
                       recurrence=UsagePeriodInput("PT1H"))  # fmt: skip
    grants = [Grant("kept", "e", kept, A, A + 24 * HOUR, A), Grant("daily", "e", daily, A, A + 24 * HOUR, A)]
    bd = Burndown(ent, grants, recurrence("PT1H", from_us(A), "UTC"), StartCache())
    usage = rollups(USAGE)
    # period 1: 7 of kept (3 left) -> rolls to min(4, max(3, 1)) = 3; daily 2 (max rollover 0) refills to 2
    first = bd.value(A + 30 * MINUTE, usage)
    assert (first.usage, first.balance, first.overage) == (7, 5, 0)
    second = bd.value(A + HOUR + 30 * MINUTE, usage)
    assert (second.usage, second.balance, second.overage) == (4, 1, 0)  # 3 + 2 - 4: kept first, then 1 of daily
    # period 3 starts with kept min(4, max(0, 1)) = 1 and daily 2: 6.5 used, 3.5 over
    third = bd.value(A + 2 * HOUR + 30 * MINUTE, usage)
    assert (third.usage, third.balance, third.overage, third.has_access) == (Decimal("6.5"), 0, Decimal("3.5"), False)
