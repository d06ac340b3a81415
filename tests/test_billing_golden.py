"""Golden tests for every charge model. Expected values were worked out by hand, not by the code."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from meterline.domain.billing import (
    ChargeModel,
    FlatFee,
    Graduated,
    InvoiceDraft,
    Package,
    PerUnit,
    PlanVersion,
    Proration,
    RateCard,
    Tier,
    UsageKey,
    Volume,
    group_key,
    price_period,
)
from meterline.domain.billing.money import currency, round_line
from meterline.domain.errors import InvalidInput, UnknownCurrency
from meterline.domain.periods import Period

APRIL = Period(datetime(2024, 4, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC))
TIERS = (Tier(D(100), D("1.00")), Tier(D(1000), D("0.50"), D(10)), Tier(None, D("0.10")))


def plan(*cards: RateCard, cur: str = "USD", commitment: D | None = None) -> PlanVersion:
    return PlanVersion("pro", 1, cur, cards, minimum_commitment=commitment)


def usage_card(model: ChargeModel, **kw: object) -> RateCard:
    return RateCard("api", "API calls", model, meter="api_calls", **kw)  # type: ignore[arg-type]


def one(model: ChargeModel, quantity: D | int | str, *, cur: str = "USD", **kw: object) -> D:
    draft = price_period(plan(usage_card(model, **kw), cur=cur), APRIL, {("api_calls", None): D(quantity)})
    assert len(draft.lines) == 1
    return draft.lines[0].amount


def draft_of(model: ChargeModel, quantity: D | int | str, **kw: object) -> InvoiceDraft:
    return price_period(plan(usage_card(model, **kw)), APRIL, {("api_calls", None): D(quantity)})


# --- graduated: 0-100 @ 1.00; 100-1000 @ 0.50 + 10 on entry; 1000+ @ 0.10 ---------------------


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("0", "0.00"),  # no tier entered: no flat fee either
        ("1", "1.00"),
        ("100", "100.00"),  # exactly on the boundary: all in tier 0 (upTo is inclusive)
        ("101", "110.50"),  # one unit past: 100 + 0.50 + 10 entry fee
        ("100.5", "110.25"),  # fraction straddling the boundary: 100 + 0.5 * 0.50 + 10
        ("1000", "560.00"),  # 100 + 900 * 0.50 + 10
        ("1001", "560.10"),
        ("1000.001", "560.00"),  # 0.001 * 0.10 = 0.0001 rounds away
    ],
)
def test_graduated(quantity: str, expected: str) -> None:
    assert one(Graduated(TIERS), quantity) == D(expected)


def test_graduated_breakdown_names_each_tier() -> None:
    line = draft_of(Graduated(TIERS), "100.5").lines[0]
    assert [(s.tier, s.units, s.unit_price, s.flat_fee, s.amount) for s in line.steps] == [
        (0, D(100), D("1.00"), D(0), D(100)),
        (1, D("0.5"), D("0.50"), D(10), D("10.25")),
    ]
    assert line.model == "graduated" and line.quantity == D("100.5") and line.exact_amount == D("110.25")


# --- volume: the total's tier prices all units --------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "expected", "tier"),
    [
        ("0", "0.00", None),
        ("100", "100.00", 0),  # on the boundary: still tier 0
        ("101", "60.50", 1),  # 101 * 0.50 + 10
        ("100.5", "60.25", 1),  # 100.5 * 0.50 + 10
        ("1000", "510.00", 1),
        ("1001", "100.10", 2),  # 1001 * 0.10
    ],
)
def test_volume(quantity: str, expected: str, tier: int | None) -> None:
    line = draft_of(Volume(TIERS), quantity).lines[0]
    assert line.amount == D(expected)
    assert [s.tier for s in line.steps] == ([] if tier is None else [tier])


# --- package: 5.00 per started block of 1000 ----------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "blocks", "expected"),
    [("0", 0, "0.00"), ("1", 1, "5.00"), ("1000", 1, "5.00"), ("1001", 2, "10.00"), ("2500.5", 3, "15.00")],
)
def test_package(quantity: str, blocks: int, expected: str) -> None:
    line = draft_of(Package(D(1000), D(5)), quantity).lines[0]
    assert line.amount == D(expected)
    assert [s.blocks for s in line.steps] == ([] if blocks == 0 else [D(blocks)])


def test_package_of_fractional_size() -> None:
    assert one(Package(D("0.5"), D(2)), "1.2") == D("6.00")  # 3 blocks of 0.5


# --- per unit, large quantities and rounding half cases -------------------------------------------


def test_per_unit_large_quantities_are_exact() -> None:
    assert one(PerUnit(D("0.000001")), 10**15) == D("1000000000.00")
    huge = D("123456789012345678901234")
    assert one(PerUnit(D("0.000000000001")), huge) == D("123456789012.35")  # 123456789012.345678901234


@pytest.mark.parametrize(
    ("cur", "price", "quantity", "expected"),
    [
        ("USD", "0.0125", 10, "0.12"),  # 0.125: half -> even 2
        ("USD", "0.0135", 10, "0.14"),  # 0.135: half -> even 4
        ("USD", "0.0125001", 10, "0.13"),  # just above half
        ("JPY", "0.5", 3, "2"),  # 1.5 -> 2
        ("JPY", "0.5", 5, "2"),  # 2.5 -> 2
        ("JPY", "0.5", 7, "4"),  # 3.5 -> 4
        ("JPY", "12.3", 10, "123"),
        ("BHD", "0.0005", 1, "0.000"),  # 0.0005 -> 0.000
        ("BHD", "0.0005", 3, "0.002"),  # 0.0015 -> 0.002
        ("BHD", "0.0005", 5, "0.002"),  # 0.0025 -> 0.002
        ("KWD", "0.12345", 10, "1.234"),  # 1.2345 -> 1.234
        ("KWD", "0.12355", 10, "1.236"),  # 1.2355 -> 1.236
    ],
)
def test_rounding_half_even_per_currency(cur: str, price: str, quantity: int, expected: str) -> None:
    amount = one(PerUnit(D(price)), quantity, cur=cur)
    assert amount == D(expected)
    assert str(amount) == expected  # carries exactly the currency's minor digits


def test_minor_units_come_from_babel_and_unknown_codes_are_rejected() -> None:
    assert [currency(c).minor_units for c in ("JPY", "USD", "EUR", "BHD", "KWD")] == [0, 2, 2, 3, 3]
    assert round_line(D("2.5"), currency("JPY")) == D(2)
    with pytest.raises(UnknownCurrency):
        currency("XYZ")
    with pytest.raises(UnknownCurrency):
        currency("usd")


# --- allowance, minimum and maximum -------------------------------------------------------------


def test_free_allowance_larger_than_usage_bills_nothing() -> None:
    line = draft_of(PerUnit(D("0.01")), 500, free_units=D(1000)).lines[0]
    assert line.amount == D("0.00")
    assert [(s.kind, s.units) for s in line.steps] == [("allowance", D(500))]


def test_free_allowance_comes_before_the_tiers() -> None:
    assert one(Graduated(TIERS), 150, free_units=D(50)) == D("100.00")  # 100 billable, all tier 0
    assert one(Graduated(TIERS), 151, free_units=D(50)) == D("110.50")


def test_line_minimum_and_maximum() -> None:
    assert one(PerUnit(D("0.01")), 100, minimum=D(5), maximum=D(20)) == D("5.00")  # 1.00 topped up
    assert one(PerUnit(D("0.01")), 0, minimum=D(5), maximum=D(20)) == D("5.00")  # the minimum applies without usage
    assert one(PerUnit(D("0.01")), 1000, minimum=D(5), maximum=D(20)) == D("10.00")
    assert one(PerUnit(D("0.01")), 5000, minimum=D(5), maximum=D(20)) == D("20.00")  # 50.00 capped
    steps = draft_of(PerUnit(D("0.01")), 5000, minimum=D(5), maximum=D(20)).lines[0].steps
    assert [(s.kind, s.amount) for s in steps] == [("unit", D("50.00")), ("maximum", D("-30.00"))]


def test_negative_usage_bills_nothing() -> None:
    assert one(PerUnit(D(1)), -5) == D("0.00")


# --- flat fees and the minimum commitment -----------------------------------------------------


BASE = RateCard("base", "Platform fee", FlatFee(D(30)))


def test_flat_fee_for_a_full_period() -> None:
    draft = price_period(plan(BASE), APRIL, {})
    assert [(x.kind, x.amount, x.proration) for x in draft.lines] == [
        ("flat", D("30.00"), Proration(2592000000000, 2592000000000))
    ]
    assert draft.total == D("30.00")


def test_minimum_commitment_tops_up_the_subtotal() -> None:
    p = plan(BASE, usage_card(PerUnit(D("0.01"))), commitment=D(100))
    draft = price_period(p, APRIL, {("api_calls", None): D(1000)})
    assert [(x.kind, x.amount) for x in draft.lines] == [
        ("flat", D("30.00")),
        ("usage", D("10.00")),
        ("minimum_commitment", D("60.00")),
    ]
    assert (draft.subtotal, draft.total, draft.amount_due) == (D("40.00"), D("100.00"), D("100.00"))


def test_minimum_commitment_met_adds_no_line() -> None:
    p = plan(BASE, usage_card(PerUnit(D("0.01"))), commitment=D(100))
    draft = price_period(p, APRIL, {("api_calls", None): D(10000)})
    assert [x.kind for x in draft.lines] == ["flat", "usage"]
    assert draft.total == D("130.00")


# --- pricing a group-by dimension -------------------------------------------------------------


def egress(default: ChargeModel | None) -> RateCard:
    groups: dict[str, ChargeModel] = {"eu": PerUnit(D("0.02")), "us": PerUnit(D("0.01"))}
    return RateCard("egress", "Egress", default, meter="egress_gb", group_by="region", groups=groups)


def test_group_values_get_their_own_price_and_line() -> None:
    usage: dict[UsageKey, D] = {
        ("egress_gb", group_key("region", "eu")): D(100),
        ("egress_gb", group_key("region", "ap")): D(10),
        ("egress_gb", group_key("region", "af")): D(1),
        ("egress_gb", None): D(111),  # the ungrouped total is not read by a grouped card
    }
    draft = price_period(plan(egress(PerUnit(D("0.05")))), APRIL, usage)
    assert [(x.group, x.quantity, x.amount) for x in draft.lines] == [
        ({"region": "eu"}, D(100), D("2.00")),
        ({"region": "us"}, D(0), D("0.00")),  # listed values always get a line
        ({"region": "af"}, D(1), D("0.05")),  # then other values, sorted, at the default price
        ({"region": "ap"}, D(10), D("0.50")),
    ]
    assert draft.total == D("2.55") and draft.unpriced == ()


def test_group_values_without_a_price_become_unpriced_lines() -> None:
    usage: dict[UsageKey, D] = {("egress_gb", group_key("region", "ap")): D(10)}
    draft = price_period(plan(egress(None)), APRIL, usage)
    assert [(x.kind, x.amount, x.quantity) for x in draft.lines][-1] == ("unpriced", D(0), D(10))
    assert draft.unpriced == ("Egress (region=ap)",)
    assert draft.total == D("0.00")


def test_a_window_must_lie_inside_its_period() -> None:
    march = Period(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))
    with pytest.raises(InvalidInput) as caught:
        price_period(plan(BASE), APRIL, {}, period=march)
    assert caught.value.code == "invalid_window"


def test_usage_must_be_finite_decimals() -> None:
    with pytest.raises(InvalidInput) as caught:
        price_period(plan(usage_card(PerUnit(D(1)))), APRIL, {("api_calls", None): D("NaN")})
    assert caught.value.code == "invalid_usage"
