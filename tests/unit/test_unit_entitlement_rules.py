"""Entitlement and grant rules (domain.entitlements.rules), directly: period anchors in the
customer's zone, anchors the counters cannot use, grant expiry, resets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterline.domain.clock import to_us
from meterline.domain.entitlements.model import Entitlement, EntitlementInput, GrantInput, UsagePeriodInput
from meterline.domain.entitlements.rules import anchor_us, check_periods, grant_expiry_us, reset
from meterline.domain.errors import InvalidInput

# Wednesday 2026-03-04 10:17:42.5 UTC
NOW = to_us(datetime(2026, 3, 4, 10, 17, 42, 500_000, tzinfo=UTC))


def metered(interval: str, anchor: datetime | None = None) -> EntitlementInput:
    return EntitlementInput(
        "metered", feature_key="f", usage_period=UsagePeriodInput(interval, anchor), issue_after_reset=Decimal(1)
    )


@pytest.mark.parametrize(
    ("interval", "zone", "expected"),
    [
        ("MONTH", "UTC", datetime(2026, 3, 1, tzinfo=UTC)),
        ("YEAR", "UTC", datetime(2026, 1, 1, tzinfo=UTC)),
        ("WEEK", "UTC", datetime(2026, 3, 2, tzinfo=UTC)),  # Monday
        ("DAY", "Asia/Kolkata", datetime(2026, 3, 4, tzinfo=timezone(timedelta(hours=5, minutes=30)))),
        ("DAY", "Asia/Kathmandu", datetime(2026, 3, 4, tzinfo=timezone(timedelta(hours=5, minutes=45)))),
        ("MONTH", "America/Los_Angeles", datetime(2026, 3, 1, tzinfo=timezone(timedelta(hours=-8)))),
    ],
)
def test_the_default_anchor_is_the_start_of_the_calendar_unit_in_the_zone(
    interval: str, zone: str, expected: datetime
) -> None:
    assert anchor_us(metered(interval), zone, NOW) == to_us(expected)


def test_a_given_anchor_is_kept_to_the_minute_and_must_carry_an_offset() -> None:
    given = datetime(2026, 2, 10, 8, 30, 59, tzinfo=UTC)
    assert anchor_us(metered("MONTH", given), "Europe/Berlin", NOW) == to_us(datetime(2026, 2, 10, 8, 30, tzinfo=UTC))
    with pytest.raises(InvalidInput) as err:
        anchor_us(metered("MONTH", datetime(2026, 2, 10)), "UTC", NOW)
    assert err.value.code == "invalid_entitlement"


def test_no_usage_period_or_a_custom_interval_anchors_at_the_current_minute() -> None:
    minute = NOW - NOW % 60_000_000
    assert anchor_us(EntitlementInput("boolean", feature_key="f"), "UTC", NOW) == minute
    assert anchor_us(metered("PT6H"), "UTC", NOW) == minute


def test_check_periods_refuses_anchors_off_the_minute_grid_or_out_of_range() -> None:
    check_periods("MONTH", anchor_us(metered("MONTH"), "Asia/Kathmandu", NOW), "Asia/Kathmandu", NOW)
    lmt = to_us(datetime(1800, 1, 1, tzinfo=UTC))  # Amsterdam's local mean time: +00:19:32
    for anchor, zone in ((lmt, "Europe/Amsterdam"), (to_us(datetime(9999, 12, 1, tzinfo=UTC)), "UTC")):
        with pytest.raises(InvalidInput) as err:
            check_periods("MONTH", anchor, zone, NOW)
        assert err.value.code == "invalid_entitlement"


def test_grant_expiry_follows_the_calendar_and_stops_at_year_9999() -> None:
    start = datetime(2026, 1, 31, tzinfo=UTC)
    month = GrantInput(Decimal(1), start, {"duration": "MONTH", "count": 1})
    assert grant_expiry_us(month) == to_us(datetime(2026, 2, 28, tzinfo=UTC))
    late = GrantInput(Decimal(1), datetime(9999, 6, 1, tzinfo=UTC), {"duration": "YEAR", "count": 1})
    with pytest.raises(InvalidInput) as err:
        grant_expiry_us(late)
    assert err.value.code == "invalid_grant"


def _ent(type_: str = "metered") -> Entitlement:
    spec = metered("MONTH") if type_ == "metered" else EntitlementInput("boolean", feature_key="f")
    return Entitlement("e", "ns", "c", "acme", "f", "f", spec, 1_000 * 60_000_000, 1_000 * 60_000_000, 0)


def test_reset_moves_the_anchor_unless_retained_and_never_into_the_future() -> None:
    minute = NOW - NOW % 60_000_000
    assert (reset(_ent(), None, False, NOW).anchor_us, reset(_ent(), None, False, NOW).last_reset_us) == (minute,) * 2
    kept = reset(_ent(), NOW - 3_600_000_001, True, NOW)
    assert kept.anchor_us == _ent().anchor_us and kept.last_reset_us == minute - 3_600_000_000
    with pytest.raises(InvalidInput) as future:
        reset(_ent(), NOW + 60_000_000, False, NOW)
    assert future.value.code == "invalid_reset"
    with pytest.raises(InvalidInput) as boolean:
        reset(_ent("boolean"), None, False, NOW)
    assert boolean.value.code == "invalid_entitlement"
