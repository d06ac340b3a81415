"""Plan versions: JSON shape, validation that lists every problem, immutability once published."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from typing import Any

import msgspec
import pytest

import meterline.domain.billing as billing
from meterline.domain.billing import (
    FlatFee,
    Graduated,
    PlanStatus,
    PlanVersion,
    RateCard,
    Tier,
    next_version,
    parse_plan,
    publish,
    revise,
    usage_queries,
    validate_plan,
)
from meterline.domain.errors import InvalidPlan, PlanVersionPublished

T = datetime(2024, 1, 1, tzinfo=UTC)

PLAN_JSON: dict[str, Any] = {
    "plan": "pro",
    "version": 1,
    "currency": "EUR",
    "minimumCommitment": "100",
    "cards": [
        {"key": "base", "name": "Platform fee", "model": {"model": "flat", "amount": "49"}},
        {
            "key": "api",
            "name": "API calls",
            "meter": "api_calls",
            "freeUnits": "1000",
            "model": {"model": "graduated", "tiers": [{"upTo": "10000", "unitPrice": "0.001"}, {"unitPrice": 0.0005}]},
            "minimum": "1",
            "maximum": "500",
        },
        {"key": "storage", "name": "Storage", "meter": "storage_gb",
         "model": {"model": "package", "packageSize": 10, "packagePrice": "2.5"}},
        {"key": "seats", "name": "Seats", "meter": "seats",
         "model": {"model": "volume", "tiers": [{"upTo": 10, "unitPrice": 8, "flatFee": 5}, {"unitPrice": 6}]}},
        {
            "key": "egress",
            "name": "Egress",
            "meter": "egress_gb",
            "groupBy": "region",
            "groups": {"eu": {"model": "per_unit", "unitPrice": "0.02"}},
            "model": {"model": "per_unit", "unitPrice": "0.05"},
        },
    ],
}  # fmt: skip


def test_plan_json_round_trips_with_exact_decimals() -> None:
    plan = parse_plan(PLAN_JSON)
    assert plan.cadence == "MONTH" and plan.status is PlanStatus.DRAFT
    api = plan.cards[1]
    assert isinstance(api.model, Graduated) and api.model.tiers[1].unit_price == D("0.0005")
    again = msgspec.json.decode(msgspec.json.encode(plan), type=PlanVersion)
    assert again == plan
    assert usage_queries(plan) == (("api_calls", None), ("storage_gb", None), ("seats", None), ("egress_gb", "region"))


def test_validation_returns_every_problem_at_once() -> None:
    bad = {
        "plan": "pro",
        "version": 1,
        "currency": "XXY",
        "cadence": "FORTNIGHT",
        "minimumCommitment": "-1",
        "cards": [
            {"key": "base", "name": "Fee", "meter": "api_calls", "model": {"model": "flat", "amount": "1"}},
            {"key": "t", "name": "T", "meter": "m", "model": {"model": "graduated", "tiers": [
                {"upTo": 10, "unitPrice": 1}, {"upTo": 10, "unitPrice": "-0.5"}, {"upTo": 20}]}},
            {"key": "p", "name": "P", "meter": "m", "model": {"model": "package", "packageSize": 0, "packagePrice": 1},
             "minimum": 10, "maximum": 5},
            {"key": "p", "name": "V", "model": {"model": "volume", "tiers": []}},
            {"key": "x", "name": "X", "meter": "m", "model": {"model": "per_unit", "unitPrice": "0.0000000000001"}},
        ],
    }  # fmt: skip
    assert validate_plan(msgspec.convert(bad, PlanVersion)) == [
        "currency 'XXY' is not an ISO 4217 code (e.g. USD, EUR, JPY)",
        "cadence: 'FORTNIGHT' is not a valid interval: not an ISO-8601 duration "
        "(use DAY, WEEK, MONTH, YEAR or an ISO-8601 duration like P2W)",
        "minimumCommitment must not be negative",
        "cards[0]: flat models belong on cards without a meter",
        "cards[1].model.tiers[1].unitPrice must not be negative",
        "cards[1].model.tiers[1].upTo must be greater than 10 (tiers strictly increase)",
        "cards[1].model.tiers[2].upTo must be absent: the last tier is open-ended",
        "cards[2].minimum must not exceed maximum",
        "cards[2].model.packageSize must be greater than 0",
        "cards[3].key 'p' is used twice",
        "cards[3]: a card without a meter needs a flat model",
        "cards[3].model.tiers must hold at least one tier",
        "cards[4].model.unitPrice has more than 12 decimal places",
    ]
    with pytest.raises(InvalidPlan) as caught:
        parse_plan(bad)
    assert caught.value.code == "invalid_plan" and caught.value.status == 400
    assert len(caught.value.extra["problems"]) == 13


def test_a_published_version_never_changes() -> None:
    draft = parse_plan(PLAN_JSON)
    edited = revise(draft, currency="USD")
    assert edited.currency == "USD" and draft.currency == "EUR"
    published = publish(edited, T)
    assert published.published and published.published_at == T
    with pytest.raises(PlanVersionPublished) as caught:
        revise(published, currency="JPY")
    assert (caught.value.code, caught.value.status) == ("plan_version_published", 409)
    with pytest.raises(PlanVersionPublished):
        publish(published, T)
    v2 = next_version(published)
    assert (v2.version, v2.status, v2.published_at, v2.cards) == (2, PlanStatus.DRAFT, None, published.cards)


def test_publishing_refuses_an_invalid_draft() -> None:
    draft = PlanVersion("pro", 1, "USD", (RateCard("base", "Fee", FlatFee(D(-1))),))
    with pytest.raises(InvalidPlan):
        publish(draft, T)


def test_tiers_decode_with_inclusive_up_to_and_open_last_tier() -> None:
    tiers = msgspec.convert([{"upTo": "100", "unitPrice": "1"}, {"unitPrice": "0.5"}], tuple[Tier, ...])
    assert tiers == (Tier(D(100), D(1)), Tier(None, D("0.5")))


def test_public_exports_are_exactly_what_is_intended() -> None:
    assert sorted(billing.__all__) == billing.__all__
    assert set(billing.__all__) == {
        *("Adjustment", "BillingWindow", "ChargeModel", "CreditGrant", "CreditResult", "Currency", "FlatFee"),
        *("Graduated", "Group", "InvoiceDraft", "InvoiceLine", "Package", "PerUnit", "PlanStatus", "PlanVersion"),
        *("Priced", "Proration", "RateCard", "Step", "Subscription", "Tier", "UsageKey", "Volume", "adjust"),
        *("apply_credits", "billing_windows", "cancel", "change_plan", "check_plan", "credit_invoice", "currency"),
        *("group_key", "next_version", "parse_plan", "price_model", "price_period", "price_units", "proration"),
        *("publish", "revise", "round_line", "usage_queries", "validate_plan", "validate_subscription"),
    }
