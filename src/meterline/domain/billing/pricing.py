"""Pure pricing: a charge model and a quantity in, an exact amount and its breakdown out.

Order of operations for one usage line (:func:`price_units`):

1. free allowance: the first ``free_units`` units are free (a quantity at or below zero bills
   nothing);
2. the charge model prices the remaining billable units (tiers count from the first billable
   unit, so the allowance comes before tier 0);
3. the line minimum tops the amount up, then the line maximum caps it.

Amounts here are exact; ``money.round_line`` rounds each line once, later.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from meterline.domain.billing.charges import ChargeModel, FlatFee, Graduated, Package, PerUnit, Step, Tier
from meterline.domain.billing.money import ZERO, add, blocks, mul, sub, total


class Priced(msgspec.Struct, frozen=True):
    """An exact amount and the steps that produced it (the steps sum to ``amount``)."""

    amount: Decimal
    steps: tuple[Step, ...]


def price_model(model: ChargeModel, quantity: Decimal) -> Priced:
    """The exact amount of ``quantity`` billable units under ``model``."""
    if isinstance(model, FlatFee):
        return _done((Step("flat", model.amount, flat_fee=model.amount),))
    if quantity <= 0:
        return Priced(ZERO, ())
    if isinstance(model, PerUnit):
        return _done((Step("unit", mul(quantity, model.unit_price), units=quantity, unit_price=model.unit_price),))
    if isinstance(model, Package):
        return _package(model, quantity)
    if isinstance(model, Graduated):
        return _done(_graduated(model.tiers, quantity))
    return _done(_volume(model.tiers, quantity))


def price_units(
    model: ChargeModel,
    quantity: Decimal,
    *,
    free_units: Decimal = ZERO,
    minimum: Decimal | None = None,
    maximum: Decimal | None = None,
) -> Priced:
    """One usage line: allowance, then the model, then the line minimum and maximum."""
    billable = max(ZERO, sub(quantity, free_units))
    free = min(max(quantity, ZERO), free_units)
    steps = (Step("allowance", ZERO, units=free),) if free_units > 0 else ()
    priced = price_model(model, billable)
    return _limit(steps + priced.steps, priced.amount, minimum, maximum)


def _limit(steps: tuple[Step, ...], amount: Decimal, minimum: Decimal | None, maximum: Decimal | None) -> Priced:
    if minimum is not None and amount < minimum:
        steps += (Step("minimum", sub(minimum, amount), flat_fee=minimum),)
        amount = minimum
    if maximum is not None and amount > maximum:
        steps += (Step("maximum", sub(maximum, amount), flat_fee=maximum),)
        amount = maximum
    return Priced(amount, steps)


def _done(steps: tuple[Step, ...]) -> Priced:
    return Priced(total(step.amount for step in steps), steps)


def _package(model: Package, quantity: Decimal) -> Priced:
    count = blocks(quantity, model.package_size)
    amount = mul(count, model.package_price)
    return Priced(amount, (Step("package", amount, units=quantity, unit_price=model.package_price, blocks=count),))


def _graduated(tiers: tuple[Tier, ...], quantity: Decimal) -> tuple[Step, ...]:
    steps: list[Step] = []
    lower = ZERO
    for index, tier in enumerate(tiers):
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        if upper <= lower:
            break
        steps.append(_tier_step(index, tier, sub(upper, lower)))
        lower = upper
    return tuple(steps)


def _volume(tiers: tuple[Tier, ...], quantity: Decimal) -> tuple[Step, ...]:
    for index, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            return (_tier_step(index, tier, quantity),)
    return (_tier_step(len(tiers) - 1, tiers[-1], quantity),)  # unreachable for a valid plan


def _tier_step(index: int, tier: Tier, units: Decimal) -> Step:
    amount = add(mul(units, tier.unit_price), tier.flat_fee)
    return Step("tier", amount, units=units, unit_price=tier.unit_price, flat_fee=tier.flat_fee, tier=index)
