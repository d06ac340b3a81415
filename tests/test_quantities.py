"""Quantities are read in the JSON number grammar only, in event data and in request bodies alike."""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from conftest import Api
from test_ingest_api import assert_problem

from meterline.domain.decimals import NotAQuantity, add, to_quantity

NOT_NUMBERS = [
    "1_000",
    "\u0663",  # Arabic-Indic three
    "\u0661\u0662",
    "\uff17",  # full-width seven
    "\U0001d7d5",  # mathematical bold seven
    " 7 ",
    "7 ",
    "\t7",
    "+3",
    ".5",
    "5.",
    "01",
    "0x10",
    "1e",
    "--1",
    "NaN",
    "nan",
    "-NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "1e999999",
    "1e-31",
    "1" * 39,
    "",
    "1,5",
    "1 000",
]
NUMBERS = {
    "0": Decimal(0),
    "-0": Decimal(0),
    "7": Decimal(7),
    "-2.5": Decimal("-2.5"),
    "1e3": Decimal(1000),
    "1E+3": Decimal(1000),
    "2.50e-2": Decimal("0.025"),
    "1" * 38: Decimal("1" * 38),
}


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_text_outside_the_json_number_grammar_is_not_a_quantity(text: str) -> None:
    with pytest.raises(NotAQuantity):
        to_quantity(text)


@pytest.mark.parametrize(("text", "value"), NUMBERS.items())
def test_json_numbers_in_text_are_quantities(text: str, value: Decimal) -> None:
    assert to_quantity(text) == value


@pytest.fixture
def tokens(api: Api) -> Api:
    assert api.create_meter(slug="tokens", eventType="t", aggregation="SUM", valueProperty="$.n").status_code == 201
    return api


def event(id_: str, value: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": id_, "source": "q", "type": "t", "subject": "acme", "data": {"n": value}}


def test_events_with_values_outside_the_grammar_are_rejected_the_others_counted(tokens: Api) -> None:
    bad = [event(f"bad{i}", text) for i, text in enumerate(NOT_NUMBERS)]
    good = [event(f"good{i}", text) for i, text in enumerate(NUMBERS)] + [event("number", 0.25)]
    r = tokens.post_events(bad + good, **{"Prefer": "return=representation"})
    assert r.status_code == 200, r.text
    outcomes = r.json()["events"]
    assert [(o["status"], o.get("reason")) for o in outcomes[: len(bad)]] == [("rejected", "unreadable_value")] * len(
        bad
    )
    assert all(o["status"] == "accepted" for o in outcomes[len(bad) :])
    total = functools.reduce(add, NUMBERS.values(), Decimal("0.25"))
    answer = msgspec.json.Decoder(float_hook=Decimal).decode(tokens.query("tokens").content)
    assert answer["data"][0]["value"] == total


def _setup_entitlement(api: Api) -> None:
    assert api.client.post("/api/v1/customers", json={"key": "acme"}, headers=api.headers()).status_code == 201
    feature = {"key": "f", "name": "F", "meterSlug": "tokens"}
    assert api.client.post("/api/v1/features", json=feature, headers=api.headers()).status_code == 201


@pytest.mark.parametrize("text", ["1_000", "\u0663", "\uff17", " 7 ", "+3", "NaN", "Infinity", "1e999999"])
def test_body_fields_outside_the_grammar_are_a_400_naming_the_member(tokens: Api, text: str) -> None:
    _setup_entitlement(tokens)
    h = tokens.headers()
    entitlement = {"type": "metered", "featureKey": "f", "usagePeriod": {"interval": "MONTH"}}
    r = tokens.client.post(
        "/api/v1/customers/acme/entitlements", json={**entitlement, "issueAfterReset": text}, headers=h
    )
    body = assert_problem(r, 400, "invalid_entitlement")
    assert "$.issueAfterReset" in body["detail"]
    check = {"customer": "acme", "features": [{"feature": "f", "quantity": text}]}
    body = assert_problem(
        tokens.client.post("/api/v1/entitlements/check", json=check, headers=h), 400, "invalid_check_request"
    )
    assert "$.features[0].quantity" in body["detail"]
    credit = {"key": "promo", "currency": "USD", "amount": text}
    r = tokens.client.post("/api/v1/customers/acme/credits", json=credit, headers=h)
    assert "$.amount" in assert_problem(r, 400, "invalid_credit_grant")["detail"]
    card = {"key": "t", "name": "T", "meter": "tokens", "model": {"model": "per_unit", "unitPrice": text}}
    plan = {"plan": "p", "name": "P", "currency": "USD", "cards": [card]}
    r = tokens.client.post("/api/v1/billing/plans", json=plan, headers=h)
    assert "unitPrice" in assert_problem(r, 400, "invalid_plan")["detail"]


def test_body_fields_in_the_grammar_are_read_exactly(tokens: Api) -> None:
    _setup_entitlement(tokens)
    h = tokens.headers()
    entitlement = {"type": "metered", "featureKey": "f", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": "1e3"}
    assert tokens.client.post("/api/v1/customers/acme/entitlements", json=entitlement, headers=h).status_code == 201
    check = {"customer": "acme", "features": [{"feature": "f", "quantity": "999.5"}]}
    answer = tokens.client.post("/api/v1/entitlements/check", json=check, headers=h).json()
    assert answer["allowed"] is True and answer["features"][0]["limit"] == 1000
