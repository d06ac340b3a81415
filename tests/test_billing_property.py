"""Property tests: random valid plans and usage against a deliberately naive reference.

The reference shares nothing with the pricing code: graduated tiers walk unit by unit over
integer quantities, volume tiers scan linearly, packages count blocks by repeated addition,
proration and rounding use ``fractions.Fraction`` and Python's half-even ``round``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from fractions import Fraction

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.domain.billing import (
    ChargeModel,
    FlatFee,
    Graduated,
    InvoiceDraft,
    Package,
    PerUnit,
    PlanVersion,
    RateCard,
    Tier,
    UsageKey,
    Volume,
    check_plan,
    group_key,
    price_period,
)
from meterline.domain.periods import Period

MINOR = {"USD": 2, "JPY": 0, "BHD": 3}
PERIOD = Period(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))
REGIONS = ("eu", "us", "ap")

prices = st.integers(0, 50_000).map(lambda n: D(n).scaleb(-4))  # 0 .. 5.0000


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.sets(st.integers(1, 250), max_size=3)))
    ups: list[D | None] = [D(b) for b in bounds] + [None]
    fees = st.sampled_from([D(0), D(0), D("1.5"), D(3)])
    return tuple(Tier(up, draw(prices), draw(fees)) for up in ups)


usage_models: st.SearchStrategy[ChargeModel] = st.one_of(
    st.builds(PerUnit, prices),
    st.builds(Package, st.integers(1, 40).map(D), prices),
    st.builds(Graduated, tier_lists()),
    st.builds(Volume, tier_lists()),
)
limits = st.one_of(st.none(), st.integers(0, 300).map(D))


@st.composite
def usage_cards(draw: st.DrawFn, index: int) -> RateCard:
    lo, hi = sorted([draw(limits) or D(0), draw(limits) or D(10**6)])
    grouped = draw(st.booleans())
    groups = {r: draw(usage_models) for r in draw(st.sets(st.sampled_from(REGIONS), min_size=1))} if grouped else {}
    model = draw(st.one_of(st.none(), usage_models)) if grouped else draw(usage_models)
    free = D(draw(st.integers(0, 60)))
    meter = f"meter_{index % 2}"
    return RateCard(
        f"card_{index}", f"Card {index}", model, meter=meter, group_by="region" if grouped else None,
        groups=groups, free_units=free, minimum=lo if draw(st.booleans()) else None,
        maximum=hi if draw(st.booleans()) else None,
    )  # fmt: skip


@st.composite
def plans(draw: st.DrawFn) -> PlanVersion:
    cards: list[RateCard] = []
    if draw(st.booleans()):
        cards.append(RateCard("base", "Base", FlatFee(draw(prices) * 100)))
    cards += [draw(usage_cards(i)) for i in range(draw(st.integers(1, 4)))]
    commitment = draw(st.one_of(st.none(), st.integers(0, 2000).map(D)))
    return check_plan(
        PlanVersion("p", 1, draw(st.sampled_from(sorted(MINOR))), tuple(cards), minimum_commitment=commitment)
    )


quantities = st.integers(0, 400).map(D)
USAGE_KEYS: list[UsageKey] = [
    ("meter_0", None),
    ("meter_1", None),
    *(("meter_0", group_key("region", r)) for r in (*REGIONS, "af")),
    *(("meter_1", group_key("region", r)) for r in REGIONS),
]
usages = st.fixed_dictionaries(dict.fromkeys(USAGE_KEYS, quantities))
windows = st.integers(1, 31 * 24).map(lambda h: Period(PERIOD.end - timedelta(hours=h), PERIOD.end))


# --- the naive reference ---------------------------------------------------------------------


def r_round(x: Fraction, minor: int) -> Fraction:
    return Fraction(round(x, minor))  # Python rounds Fractions half to even


def r_graduated(tiers: tuple[Tier, ...], q: int) -> Fraction:
    amount, entered = Fraction(0), set()
    for unit in range(1, q + 1):
        i = next(i for i, t in enumerate(tiers) if t.up_to is None or unit <= t.up_to)
        amount += Fraction(tiers[i].unit_price)
        entered.add(i)
    return amount + sum((Fraction(tiers[i].flat_fee) for i in entered), Fraction(0))


def r_volume(tiers: tuple[Tier, ...], q: int) -> Fraction:
    if q == 0:
        return Fraction(0)
    for t in tiers:
        if t.up_to is None or q <= t.up_to:
            return q * Fraction(t.unit_price) + Fraction(t.flat_fee)
    raise AssertionError("the last tier is open")


def r_package(m: Package, q: int) -> Fraction:
    count, covered = 0, 0
    while covered < q:
        count, covered = count + 1, covered + int(m.package_size)
    return count * Fraction(m.package_price)


def r_model(m: ChargeModel, q: int) -> Fraction:
    if isinstance(m, PerUnit):
        return q * Fraction(m.unit_price)
    if isinstance(m, Package):
        return r_package(m, q)
    if isinstance(m, Graduated):
        return r_graduated(m.tiers, q)
    assert isinstance(m, Volume)
    return r_volume(m.tiers, q)


def r_line(card: RateCard, m: ChargeModel, q: int) -> Fraction:
    amount = r_model(m, max(0, q - int(card.free_units)))
    if card.minimum is not None:
        amount = max(amount, Fraction(card.minimum))
    if card.maximum is not None:
        amount = min(amount, Fraction(card.maximum))
    return amount


def r_card(card: RateCard, usage: dict[UsageKey, D], minor: int, frac: Fraction) -> list[Fraction]:
    if isinstance(card.model, FlatFee):
        return [r_round(Fraction(card.model.amount) * frac, minor)]
    if card.group_by is None:
        assert card.model is not None
        return [r_round(r_line(card, card.model, int(usage[(str(card.meter), None)])), minor)]
    amounts = []
    for (meter, group), q in usage.items():
        value = group[0][1] if isinstance(group, tuple) else None
        if meter == card.meter and value is not None and (value in card.groups or q):
            model = card.groups.get(value, card.model)
            amounts.append(Fraction(0) if model is None else r_round(r_line(card, model, int(q)), minor))
    return amounts


def reference_total(plan: PlanVersion, usage: dict[UsageKey, D], window: Period) -> Fraction:
    minor = MINOR[plan.currency]
    frac = Fraction(window.end_us - window.start_us, PERIOD.end_us - PERIOD.start_us)
    subtotal = sum((a for card in plan.cards for a in r_card(card, usage, minor, frac)), Fraction(0))
    if plan.minimum_commitment is None:
        return subtotal
    return subtotal + max(Fraction(0), r_round(Fraction(plan.minimum_commitment) * frac - subtotal, minor))


# --- the properties ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(plans(), usages, windows)
def test_total_matches_the_naive_reference(plan: PlanVersion, usage: dict[UsageKey, D], window: Period) -> None:
    draft = price_period(plan, window, usage, period=PERIOD)
    assert draft.total == sum((line.amount for line in draft.lines), D(0))
    assert draft.subtotal == sum((x.amount for x in draft.lines if x.kind != "minimum_commitment"), D(0))
    assert Fraction(draft.total) == reference_total(plan, usage, window)
    for line in draft.lines:
        assert line.amount.as_tuple().exponent == -MINOR[plan.currency] or line.kind == "unpriced"
        steps = sum((Fraction(s.amount) for s in line.steps), Fraction(0))
        assert Fraction(line.exact_amount) == steps or line.kind == "unpriced"
        assert line.amount >= 0


@settings(max_examples=100, deadline=None)
@given(plans(), usages, windows)
def test_pricing_is_deterministic(plan: PlanVersion, usage: dict[UsageKey, D], window: Period) -> None:
    first: InvoiceDraft = price_period(plan, window, usage, period=PERIOD)
    second: InvoiceDraft = price_period(plan, window, dict(reversed(usage.items())), period=PERIOD)
    assert first == second
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    assert msgspec.json.decode(msgspec.json.encode(first), type=InvoiceDraft) == first
