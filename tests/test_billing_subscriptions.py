"""Billing windows, month-end anchors, DST proration and plan changes (expected values by hand)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest

from meterline.domain.billing import (
    FlatFee,
    PerUnit,
    PlanVersion,
    RateCard,
    Subscription,
    billing_windows,
    cancel,
    change_plan,
    price_period,
    validate_subscription,
)
from meterline.domain.billing.subscriptions import billing_anchor
from meterline.domain.errors import InvalidSubscription

NY = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def bounds(sub: Subscription, until: datetime, cadence: str = "MONTH") -> list[tuple[str, str, str, str]]:
    return [
        (w.period.start.date().isoformat(), w.period.end.date().isoformat(), w.window.start.isoformat(),
         w.window.end.isoformat())
        for w in billing_windows(sub, cadence, until)
    ]  # fmt: skip


def test_anchor_on_the_31st_clamps_to_month_end() -> None:
    sub = Subscription("acme", "pro", 1, utc(2024, 1, 31), "UTC", anchor_day=31)
    periods = [(a, b) for a, b, _, _ in bounds(sub, utc(2024, 5, 1))]
    assert periods == [
        ("2024-01-31", "2024-02-29"),
        ("2024-02-29", "2024-03-31"),
        ("2024-03-31", "2024-04-30"),
        ("2024-04-30", "2024-05-31"),
    ]


def test_anchor_on_the_30th_starting_mid_month_gives_a_partial_first_period() -> None:
    sub = Subscription("acme", "pro", 1, utc(2023, 1, 15, 12), "UTC", anchor_day=30)
    assert billing_anchor(sub) == utc(2022, 12, 30)
    assert bounds(sub, utc(2023, 3, 1)) == [
        ("2022-12-30", "2023-01-30", "2023-01-15T12:00:00+00:00", "2023-01-30T00:00:00+00:00"),
        ("2023-01-30", "2023-02-28", "2023-01-30T00:00:00+00:00", "2023-02-28T00:00:00+00:00"),
        ("2023-02-28", "2023-03-30", "2023-02-28T00:00:00+00:00", "2023-03-30T00:00:00+00:00"),
    ]


def test_anchor_on_february_29th() -> None:
    sub = Subscription("acme", "pro", 1, utc(2024, 2, 29), "UTC", anchor_day=29)
    periods = [(a, b) for a, b, _, _ in bounds(sub, utc(2025, 3, 1))]
    assert periods[:2] == [("2024-02-29", "2024-03-29"), ("2024-03-29", "2024-04-29")]
    assert ("2025-01-29", "2025-02-28") in periods and ("2025-02-28", "2025-03-29") in periods


def test_last_period_is_clipped_to_the_end() -> None:
    sub = Subscription("acme", "pro", 1, utc(2024, 1, 1), "UTC", end=utc(2024, 2, 10, 6))
    assert bounds(sub, utc(2030, 1, 1)) == [
        ("2024-01-01", "2024-02-01", "2024-01-01T00:00:00+00:00", "2024-02-01T00:00:00+00:00"),
        ("2024-02-01", "2024-03-01", "2024-02-01T00:00:00+00:00", "2024-02-10T06:00:00+00:00"),
    ]


def test_periods_are_cut_at_local_midnight_in_the_customer_zone() -> None:
    sub = Subscription("acme", "pro", 1, datetime(2024, 3, 1, tzinfo=NY), "America/New_York")
    (first,) = billing_windows(sub, "MONTH", datetime(2024, 3, 2, tzinfo=NY))
    assert first.period.start_us == int(utc(2024, 3, 1, 5).timestamp()) * 10**6  # EST, UTC-5
    assert first.period.end_us == int(utc(2024, 4, 1, 4).timestamp()) * 10**6  # EDT, UTC-4


def flat_plan(fee: str, version: int = 1, unit_price: str = "0.10") -> PlanVersion:
    cards = (
        RateCard("base", "Platform fee", FlatFee(D(fee))),
        RateCard("api", "API calls", PerUnit(D(unit_price)), meter="api_calls", free_units=D(100)),
    )
    return PlanVersion("pro", version, "USD", cards)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        # March 2024 in New York lasts 743 hours (spring forward). Mar 16 -> Apr 1 is 384 hours,
        # so 743.00 * 384 / 743 = 384.00 (by days it would be 743 * 16 / 31 = 383.48).
        (datetime(2024, 3, 16, tzinfo=NY), "384.00"),
        # Mar 10 00:00 EST -> Apr 1: 22 days minus the lost hour = 527 hours.
        (datetime(2024, 3, 10, tzinfo=NY), "527.00"),
    ],
)
def test_flat_fee_proration_counts_real_hours_across_dst(start: datetime, expected: str) -> None:
    sub = Subscription("acme", "pro", 1, start, "America/New_York")
    (w,) = billing_windows(sub, "MONTH", datetime(2024, 3, 31, tzinfo=NY))
    draft = price_period(flat_plan("743"), w.window, {}, period=w.period)
    assert draft.lines[0].amount == D(expected)
    assert draft.lines[0].proration is not None
    assert draft.lines[0].proration.period_us == 743 * 3600 * 10**6


def test_flat_fee_proration_in_a_25_hour_day_month() -> None:
    # November 2024 in New York lasts 721 hours; Nov 16 00:00 EST -> Dec 1 is 360 hours.
    sub = Subscription("acme", "pro", 1, datetime(2024, 11, 16, tzinfo=NY), "America/New_York")
    (w,) = billing_windows(sub, "MONTH", datetime(2024, 11, 30, tzinfo=NY))
    assert price_period(flat_plan("721"), w.window, {}, period=w.period).lines[0].amount == D("360.00")


def test_plan_change_mid_period_bills_two_clipped_windows() -> None:
    sub = Subscription("acme", "pro", 1, utc(2024, 4, 1), "UTC")
    old, new = change_plan(sub, utc(2024, 4, 11), "pro", 2)
    assert (old.end, new.start, new.version, new.anchor_day) == (utc(2024, 4, 11), utc(2024, 4, 11), 2, 1)
    (w_old,) = billing_windows(old, "MONTH", utc(2024, 5, 1))
    (w_new,) = billing_windows(new, "MONTH", utc(2024, 5, 1))
    assert w_old.period == w_new.period and w_old.window.end == w_new.window.start
    # Usage is split at the change: 300 units before it, 500 after. Allowances are not prorated:
    # each window gets its full 100 free units.
    a = price_period(flat_plan("30"), w_old.window, {("api_calls", None): D(300)}, period=w_old.period)
    b = price_period(flat_plan("60", 2, "0.05"), w_new.window, {("api_calls", None): D(500)}, period=w_new.period)
    assert [x.amount for x in a.lines] == [D("10.00"), D("20.00")]  # 30 * 10/30 days; 200 * 0.10
    assert [x.amount for x in b.lines] == [D("40.00"), D("20.00")]  # 60 * 20/30 days; 400 * 0.05
    assert (a.total, b.total) == (D("30.00"), D("60.00"))


def test_cancel_and_change_must_fall_inside_the_subscription() -> None:
    sub = Subscription("acme", "pro", 1, utc(2024, 4, 1), "UTC", end=utc(2024, 6, 1))
    assert cancel(sub, utc(2024, 5, 1)).end == utc(2024, 5, 1)
    with pytest.raises(InvalidSubscription):
        cancel(sub, utc(2024, 6, 1))
    with pytest.raises(InvalidSubscription):
        change_plan(sub, utc(2024, 4, 1), "pro", 2)


def test_subscription_validation_lists_every_problem() -> None:
    bad = Subscription("", "Pro!", 0, datetime(2024, 1, 1), "Mars/Base", anchor_day=32)
    assert validate_subscription(bad) == [
        "customer is required",
        "plan must be a plan key and version 1 or more",
        "anchorDay must be between 1 and 31",
        "start must carry a UTC offset",
        "zone 'Mars/Base' is not an IANA time zone",
    ]
    with pytest.raises(InvalidSubscription):
        billing_windows(bad, "MONTH", utc(2024, 2, 1))
