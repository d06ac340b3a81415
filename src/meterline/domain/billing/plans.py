"""Versioned price plans: a draft can be edited, a published version never changes.

A plan is identified by ``plan`` (a key) and ``version`` (1, 2, ...). Any change to a published
version is a new version: :func:`next_version` copies it into a fresh draft, :func:`revise`
edits drafts only and raises ``PlanVersionPublished`` (409) for a published one. Subscriptions
name ``plan`` + ``version``, so invoices always price with the exact version in force.

JSON shape (camelCase):

    {"plan": "pro", "version": 3, "currency": "USD", "cadence": "MONTH",
     "minimumCommitment": "100", "cards": [<rate card>, ...],
     "status": "draft", "publishedAt": null}
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from meterline.domain.billing.charges import price_problems
from meterline.domain.billing.money import is_currency
from meterline.domain.billing.ratecards import RateCard, validate_card
from meterline.domain.errors import InvalidInput, InvalidPlan, PlanVersionPublished
from meterline.domain.identifiers import SLUG_RULE, is_slug, name_problem
from meterline.domain.periods import at_least_a_day, parse_interval


class PlanStatus(enum.StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"


class PlanVersion(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """One version of a price plan."""

    plan: str
    version: int
    currency: str
    cards: tuple[RateCard, ...]
    cadence: str = "MONTH"
    minimum_commitment: Decimal | None = None
    name: str | None = None
    status: PlanStatus = PlanStatus.DRAFT
    published_at: datetime | None = None

    @property
    def published(self) -> bool:
        return self.status is PlanStatus.PUBLISHED


def validate_plan(plan: PlanVersion) -> list[str]:
    """Every problem with a plan version, as messages (empty when it is valid)."""
    problems = [] if is_slug(plan.plan) else [f"plan must be {SLUG_RULE}"]
    if plan.name is not None and (problem := name_problem("name", plan.name)):
        problems.append(problem)
    if plan.version < 1:
        problems.append("version must be 1 or more")
    if not is_currency(plan.currency):
        problems.append(f"currency {plan.currency!r} is not an ISO 4217 code (e.g. USD, EUR, JPY)")
    problems += _cadence_problems(plan.cadence)
    if plan.minimum_commitment is not None:
        problems += price_problems("minimumCommitment", plan.minimum_commitment)
    problems += _card_problems(plan.cards)
    if plan.published and plan.published_at is None:
        problems.append("publishedAt is required once published")
    return problems


def _cadence_problems(cadence: str) -> list[str]:
    try:
        normal = parse_interval(cadence)
    except InvalidInput as exc:
        return [f"cadence: {exc.detail}"]
    if not at_least_a_day(normal):
        # one invoice per period and subscription: PT1S would write 86,400 invoices a day each
        return [f"cadence must be at least one day (got {cadence!r})"]
    return [] if normal == cadence else [f"cadence must be written {normal!r}"]


def _card_problems(cards: tuple[RateCard, ...]) -> list[str]:
    problems = [] if cards else ["cards must hold at least one rate card"]
    seen: set[str] = set()
    for i, card in enumerate(cards):
        if card.key in seen:
            problems.append(f"cards[{i}].key {card.key!r} is used twice")
        seen.add(card.key)
        problems += validate_card(card, f"cards[{i}]")
    return problems


def check_plan(plan: PlanVersion) -> PlanVersion:
    """Return ``plan`` when valid, else raise ``InvalidPlan`` listing every problem."""
    problems = validate_plan(plan)
    if problems:
        raise InvalidPlan("Invalid price plan: " + "; ".join(problems), problems=problems)
    return plan


def parse_plan(body: Any) -> PlanVersion:
    """A decoded JSON object as a valid plan version, or ``InvalidPlan``."""
    try:
        plan = msgspec.convert(body, PlanVersion)
    except msgspec.ValidationError as exc:
        raise InvalidPlan(f"Invalid price plan: {exc}", problems=[str(exc)]) from None
    return check_plan(plan)


def publish(plan: PlanVersion, at: datetime) -> PlanVersion:
    """The published form of a valid draft; from then on it never changes."""
    _refuse_published(plan)
    return check_plan(msgspec.structs.replace(plan, status=PlanStatus.PUBLISHED, published_at=at))


def revise(plan: PlanVersion, **changes: Any) -> PlanVersion:
    """A draft with ``changes`` applied; a published version raises ``PlanVersionPublished``."""
    _refuse_published(plan)
    if {"plan", "version", "status", "published_at"} & changes.keys():
        raise InvalidInput("plan, version, status and publishedAt cannot be revised", code="invalid_plan")
    return msgspec.structs.replace(plan, **changes)


def next_version(plan: PlanVersion, version: int | None = None) -> PlanVersion:
    """A new draft copying ``plan``, numbered ``version`` (default: ``plan.version + 1``)."""
    number = plan.version + 1 if version is None else version
    return msgspec.structs.replace(plan, version=number, status=PlanStatus.DRAFT, published_at=None)


def _refuse_published(plan: PlanVersion) -> None:
    if plan.published:
        raise PlanVersionPublished(
            f"plan {plan.plan!r} version {plan.version} is published and never changes; create version "
            f"{plan.version + 1} instead",
            plan=plan.plan,
            version=plan.version,
        )
