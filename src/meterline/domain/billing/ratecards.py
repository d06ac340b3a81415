"""Rate cards: one priced item of a plan, and which charge model prices which usage.

A rate card either charges a flat recurring fee (no ``meter``, a ``flat`` model) or prices one
meter's usage. JSON shape (camelCase, Decimals as strings):

    {"key": "seats", "name": "Platform fee", "model": {"model": "flat", "amount": "49"}}
    {"key": "api", "name": "API calls", "meter": "api_calls", "freeUnits": "1000",
     "model": {"model": "per_unit", "unitPrice": "0.002"}, "minimum": "5", "maximum": "500"}
    {"key": "egress", "name": "Egress", "meter": "egress_gb", "groupBy": "region",
     "groups": {"eu": {"model": "per_unit", "unitPrice": "0.02"},
                "us": {"model": "per_unit", "unitPrice": "0.01"}},
     "model": {"model": "per_unit", "unitPrice": "0.05"}}

Group pricing: a card with ``groupBy`` reads the meter's usage grouped by exactly that dimension
and makes one line per value: every value listed in ``groups`` (even without usage), then every
other value with non-zero usage, sorted. A listed value uses its own model; any other value uses
``model`` (the default) when the card has one, otherwise it becomes an *unpriced* line (amount 0,
named in ``InvoiceDraft.unpriced``) so nothing is silently dropped and a billing run can refuse
to finalize. ``freeUnits``, ``minimum`` and ``maximum`` apply to each line on its own.

``unitSize`` prices the meter's usage in larger units: the usage is divided by it first, so a
TIME_WEIGHTED_SUM meter (GB-seconds) with ``"unitSize": "3600"`` is priced in GB-hours, and a
line's ``quantity`` is in those units.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from meterline.domain.billing.charges import ChargeModel, FlatFee, price_problems, validate_model
from meterline.domain.billing.money import ZERO, per
from meterline.domain.identifiers import SLUG_RULE, is_group_key, is_slug, name_problem


class RateCard(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """One priced item of a plan version."""

    key: str
    name: str
    model: ChargeModel | None = None
    meter: str | None = None
    group_by: str | None = None
    groups: dict[str, ChargeModel] = {}
    free_units: Decimal = ZERO
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    unit_size: Decimal | None = None
    """The meter's units in one priced unit: the usage is divided by it before ``freeUnits``
    and the model apply (a TIME_WEIGHTED_SUM meter counts GB-seconds: 3600 prices GB-hours)."""

    @property
    def is_flat(self) -> bool:
        return self.meter is None

    def units(self, quantity: Decimal) -> Decimal:
        """The usage ``quantity`` in the card's priced units (``unitSize``)."""
        return quantity if self.unit_size is None else per(quantity, self.unit_size)

    def model_for(self, value: str | None) -> ChargeModel | None:
        """The model pricing one group value (``None``: ungrouped), or None when unpriced."""
        if value is not None and value in self.groups:
            return self.groups[value]
        return self.model


def validate_card(card: RateCard, path: str) -> list[str]:
    """Every problem with one rate card; ``path`` prefixes each message."""
    problems = [] if is_slug(card.key) else [f"{path}.key must be {SLUG_RULE}"]
    if problem := name_problem(f"{path}.name", card.name):
        problems.append(problem)
    problems += _flat_problems(card, path) if card.is_flat else _usage_problems(card, path)
    if card.model is not None:
        problems += validate_model(card.model, f"{path}.model")
    return problems


def _flat_problems(card: RateCard, path: str) -> list[str]:
    problems = [] if isinstance(card.model, FlatFee) else [f"{path}: a card without a meter needs a flat model"]
    extras = card.group_by or card.groups or card.free_units or card.minimum is not None or card.maximum is not None
    if extras or card.unit_size is not None:
        problems.append(f"{path}: flat fees take no groupBy, groups, freeUnits, unitSize, minimum or maximum")
    return problems


def _usage_problems(card: RateCard, path: str) -> list[str]:
    problems = [] if card.meter and is_slug(card.meter) else [f"{path}.meter must be a meter slug"]
    models = ([card.model] if card.model else []) + list(card.groups.values())
    if any(isinstance(m, FlatFee) for m in models):
        problems.append(f"{path}: flat models belong on cards without a meter")
    if card.model is None and not card.groups:
        problems.append(f"{path}.model is required")
    problems += _group_problems(card, path)
    problems += _limit_problems(card, path)
    return problems


def _group_problems(card: RateCard, path: str) -> list[str]:
    if card.group_by is None:
        return [f"{path}.groups need a groupBy dimension"] if card.groups else []
    problems = [] if is_group_key(card.group_by) else [f"{path}.groupBy must be a group-by key"]
    if not card.groups:
        problems.append(f"{path}.groups must price at least one value of {card.group_by!r}")
    for value, model in card.groups.items():
        problems += validate_model(model, f"{path}.groups[{value!r}]")
    return problems


def _limit_problems(card: RateCard, path: str) -> list[str]:
    problems: list[str] = []
    if not card.free_units.is_finite() or card.free_units < 0:
        problems.append(f"{path}.freeUnits must not be negative")
    if card.unit_size is not None and (not card.unit_size.is_finite() or card.unit_size <= 0):
        problems.append(f"{path}.unitSize must be greater than 0")
    if card.minimum is not None:
        problems += price_problems(f"{path}.minimum", card.minimum)
    if card.maximum is not None:
        problems += price_problems(f"{path}.maximum", card.maximum)
    if card.minimum is not None and card.maximum is not None and card.minimum > card.maximum:
        problems.append(f"{path}.minimum must not exceed maximum")
    return problems
