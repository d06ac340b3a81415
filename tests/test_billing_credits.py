"""Credit burn order and expiry; adjustment lines for late and corrected usage."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from meterline.domain.billing import (
    CreditGrant,
    Graduated,
    PerUnit,
    PlanVersion,
    RateCard,
    Tier,
    adjust,
    apply_credits,
    credit_invoice,
    price_period,
)
from meterline.domain.errors import CurrencyMismatch, InvalidInput
from meterline.domain.periods import Period


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


AT = utc(2024, 2, 15)
GRANTS = [
    CreditGrant("late_prio", "USD", D("30.00"), utc(2024, 1, 1), priority=2),
    CreditGrant("expires_jun", "USD", D("50.00"), utc(2024, 1, 1), priority=1, expires_at=utc(2024, 6, 1)),
    CreditGrant("expires_mar", "USD", D("40.00"), utc(2024, 1, 1), priority=1, expires_at=utc(2024, 3, 1)),
    CreditGrant("expired", "USD", D("500.00"), utc(2024, 1, 1), priority=0, expires_at=utc(2024, 2, 1)),
    CreditGrant("future", "USD", D("500.00"), utc(2024, 3, 1), priority=0),
]


def test_credits_burn_by_priority_then_earliest_expiry_skipping_unusable_grants() -> None:
    result = apply_credits(D("100.00"), GRANTS, AT, currency_code="USD")
    assert [(x.credit_grant, x.amount) for x in result.lines] == [
        ("expires_mar", D("-40.00")),
        ("expires_jun", D("-50.00")),
        ("late_prio", D("-10.00")),
    ]
    assert result.balances == {
        "late_prio": D("20.00"),
        "expires_jun": D("0.00"),
        "expires_mar": D("0.00"),
        "expired": D("500.00"),
        "future": D("500.00"),
    }
    assert (result.applied, result.remaining) == (D("100.00"), D("0.00"))


def test_credits_never_make_the_total_negative() -> None:
    result = apply_credits(D("25.00"), GRANTS, AT, currency_code="USD")
    assert [(x.credit_grant, x.amount) for x in result.lines] == [("expires_mar", D("-25.00"))]
    assert result.remaining == D("0.00") and result.balances["expires_mar"] == D("15.00")
    assert apply_credits(D("0.00"), GRANTS, AT, currency_code="USD").lines == ()


def test_a_grant_is_unusable_from_its_expiry_instant_and_usable_from_its_effective_instant() -> None:
    on_expiry = apply_credits(D("10.00"), GRANTS, utc(2024, 3, 1), currency_code="USD")
    assert [x.credit_grant for x in on_expiry.lines] == ["future"]


def test_grants_are_checked() -> None:
    with pytest.raises(CurrencyMismatch):
        apply_credits(D(10), [CreditGrant("eur", "EUR", D(5), utc(2024, 1, 1))], AT, currency_code="USD")
    with pytest.raises(InvalidInput) as caught:
        apply_credits(D(10), [CreditGrant("c", "JPY", D("5.5"), utc(2024, 1, 1))], AT, currency_code="JPY")
    assert caught.value.code == "invalid_credit_grant"


MARCH = Period(utc(2024, 3, 1), utc(2024, 4, 1))
TIERED = RateCard("api", "API calls", Graduated((Tier(D(100), D(1)), Tier(None, D("0.5")))), meter="api_calls")


def test_credit_invoice_reduces_the_amount_due_but_not_the_total() -> None:
    draft = price_period(PlanVersion("pro", 1, "USD", (TIERED,)), MARCH, {("api_calls", None): D(90)})
    credited, result = credit_invoice(draft, GRANTS, AT)
    assert (credited.total, credited.amount_due) == (D("90.00"), D("0.00"))
    assert [x.amount for x in credited.credits] == [D("-40.00"), D("-50.00")]
    assert result.balances["late_prio"] == D("30.00")


def test_late_usage_becomes_an_adjustment_priced_at_its_true_tier() -> None:
    plan = PlanVersion("pro", 1, "USD", (TIERED,))
    late = adjust(plan, MARCH, {("api_calls", None): D(90)}, {("api_calls", None): D(110)}, invoice_number="INV-7")
    # Invoiced 90 units = 90.00. Now 110 = 100 * 1 + 10 * 0.5 = 105.00. Difference +15.00.
    (line,) = late.lines
    assert (line.kind, line.amount, line.quantity, line.references) == ("adjustment", D("15.00"), D(20), "INV-7")
    assert (line.card, line.meter, line.start, line.end) == ("api", "api_calls", MARCH.start, MARCH.end)
    assert late.total == D("15.00")


def test_corrections_down_and_the_minimum_commitment_adjust_too() -> None:
    plan = PlanVersion("pro", 1, "USD", (TIERED,), minimum_commitment=D(100))
    down = adjust(plan, MARCH, {("api_calls", None): D(90)}, {("api_calls", None): D(80)}, invoice_number="INV-8")
    # 90.00 + 10.00 true-up before; 80.00 + 20.00 after: usage -10.00, commitment +10.00.
    assert [(x.name, x.amount) for x in down.lines] == [
        ("Adjustment: API calls", D("-10.00")),
        ("Adjustment: Minimum commitment", D("10.00")),
    ]
    up = adjust(plan, MARCH, {("api_calls", None): D(90)}, {("api_calls", None): D(110)}, invoice_number="INV-8")
    # 105.00 with no true-up after: usage +15.00, commitment -10.00.
    assert [x.amount for x in up.lines] == [D("15.00"), D("-10.00")] and up.total == D("5.00")


def test_unchanged_usage_needs_no_adjustment() -> None:
    plan = PlanVersion("pro", 1, "USD", (RateCard("api", "API", PerUnit(D("0.001")), meter="api_calls"),))
    same = adjust(plan, MARCH, {("api_calls", None): D(1000)}, {("api_calls", None): D(1001)}, invoice_number="I")
    assert same.lines == () and same.total == D(0)  # 1.000 vs 1.001: both round to 1.00
