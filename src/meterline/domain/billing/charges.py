"""Charge models as data: what a rate card charges for a quantity, and how to check one.

Each model is a msgspec Struct tagged by ``model`` in JSON (camelCase fields, Decimal values as
strings or numbers):

    {"model": "flat", "amount": "49"}
    {"model": "per_unit", "unitPrice": "0.002"}
    {"model": "package", "packageSize": "1000", "packagePrice": "5"}
    {"model": "graduated", "tiers": [{"upTo": "1000", "unitPrice": "0"}, {"unitPrice": "0.01"}]}
    {"model": "volume", "tiers": [{"upTo": "100", "unitPrice": "2", "flatFee": "10"}, {"unitPrice": "1"}]}

Tier boundaries: ``upTo`` is INCLUSIVE (as in Stripe): a tier holds the units ``q`` with
``previous upTo < q <= upTo``; the last tier has no ``upTo`` and is open-ended. Tier indexes in
breakdowns are 0-based positions in ``tiers``. Pricing itself lives in ``pricing``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from meterline.domain.billing.money import MAX_PRICE_PLACES, ZERO, places


class Tier(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """One tier: ``unit_price`` per unit in it, ``flat_fee`` once when it is entered."""

    up_to: Decimal | None = None
    unit_price: Decimal = ZERO
    flat_fee: Decimal = ZERO


class _Model(msgspec.Struct, frozen=True, rename="camel", tag_field="model", forbid_unknown_fields=True):
    pass


class FlatFee(_Model, frozen=True, tag="flat"):
    """A recurring fee per billing period, independent of usage (prorated for partial periods)."""

    amount: Decimal


class PerUnit(_Model, frozen=True, tag="per_unit"):
    """``unit_price`` for every billable unit."""

    unit_price: Decimal


class Package(_Model, frozen=True, tag="package"):
    """``package_price`` per started block of ``package_size`` units (0 units -> 0 blocks)."""

    package_size: Decimal
    package_price: Decimal


class Graduated(_Model, frozen=True, tag="graduated"):
    """Each tier's units at that tier's price, plus the flat fee of every tier entered."""

    tiers: tuple[Tier, ...]


class Volume(_Model, frozen=True, tag="volume"):
    """All units at the price of the one tier the total falls in, plus that tier's flat fee."""

    tiers: tuple[Tier, ...]


ChargeModel = FlatFee | PerUnit | Package | Graduated | Volume
ModelName = Literal["flat", "per_unit", "package", "graduated", "volume"]

StepKind = Literal["allowance", "flat", "proration", "unit", "package", "tier", "minimum", "maximum", "charged"]


class Step(msgspec.Struct, frozen=True, rename="camel"):
    """One step of a line's breakdown. ``amount`` is exact (unrounded); a line's steps sum to
    the line's exact amount, which is then rounded once.

    Kinds: ``allowance`` (free units, amount 0), ``unit`` (per-unit), ``package`` (``blocks``
    started), ``tier`` (``tier`` index, units in it, its unit price and flat fee), ``flat`` (a
    recurring fee), ``proration`` (prorated amount minus full amount), ``minimum``/``maximum``
    (top-up or cap; ``flat_fee`` holds the limit), ``charged`` (the subtotal a minimum
    commitment already counts, negative).
    """

    kind: StepKind
    amount: Decimal
    units: Decimal = ZERO
    unit_price: Decimal = ZERO
    flat_fee: Decimal = ZERO
    tier: int | None = None
    blocks: Decimal | None = None


def model_name(model: ChargeModel) -> ModelName:
    """The JSON tag of a model (``"graduated"``)."""
    return _NAMES[type(model)]


_NAMES: dict[type[_Model], ModelName] = {
    FlatFee: "flat",
    PerUnit: "per_unit",
    Package: "package",
    Graduated: "graduated",
    Volume: "volume",
}


def price_problems(path: str, value: Decimal) -> list[str]:
    """Problems with one price: finite, not negative, at most 12 decimal places."""
    if not value.is_finite():
        return [f"{path} must be a finite number"]
    problems = [f"{path} must not be negative"] if value < 0 else []
    if places(value) > MAX_PRICE_PLACES:
        problems.append(f"{path} has more than {MAX_PRICE_PLACES} decimal places")
    return problems


def validate_model(model: ChargeModel, path: str) -> list[str]:
    """Every problem with one charge model; ``path`` prefixes each message."""
    if isinstance(model, FlatFee):
        return price_problems(f"{path}.amount", model.amount)
    if isinstance(model, PerUnit):
        return price_problems(f"{path}.unitPrice", model.unit_price)
    if isinstance(model, Package):
        return _package_problems(model, path)
    return _tier_problems(model.tiers, f"{path}.tiers")


def _package_problems(model: Package, path: str) -> list[str]:
    problems = price_problems(f"{path}.packagePrice", model.package_price)
    if not model.package_size.is_finite() or model.package_size <= 0:
        problems.append(f"{path}.packageSize must be greater than 0")
    return problems


def _tier_problems(tiers: tuple[Tier, ...], path: str) -> list[str]:
    if not tiers:
        return [f"{path} must hold at least one tier"]
    problems: list[str] = []
    previous = ZERO
    for i, tier in enumerate(tiers):
        problems += price_problems(f"{path}[{i}].unitPrice", tier.unit_price)
        problems += price_problems(f"{path}[{i}].flatFee", tier.flat_fee)
        last = i == len(tiers) - 1
        if last and tier.up_to is not None:
            problems.append(f"{path}[{i}].upTo must be absent: the last tier is open-ended")
        elif not last and tier.up_to is None:
            problems.append(f"{path}[{i}].upTo is required: only the last tier is open-ended")
        elif tier.up_to is not None:
            if not tier.up_to.is_finite() or tier.up_to <= previous:
                problems.append(f"{path}[{i}].upTo must be greater than {previous} (tiers strictly increase)")
            else:
                previous = tier.up_to
    return problems
