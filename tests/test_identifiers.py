"""Identifiers and names callers choose are held to one policy (``meterline.domain.identifiers``): the
whole text is checked (``"api_calls\\n"`` was stored as a meter slug, a feature key, a customer
key and a plan key), and every kind has a length limit (a 300-character feature key and a
3,000-character channel name were accepted). Each refusal is a 400 with the kind's code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from conftest import Api, build_api

from meterline.domain.identifiers import NAME_PATTERN, is_group_key, is_key, is_namespace, is_slug

LONG_SLUG = "a" * 65
FEE = {"key": "fee", "name": "Fee", "model": {"model": "flat", "amount": "1"}}


def meter(**over: Any) -> dict[str, Any]:
    return {"slug": "calls", "eventType": "request", "aggregation": "COUNT"} | over


def plan(**over: Any) -> dict[str, Any]:
    return {"plan": "pro", "currency": "USD", "cards": [FEE]} | over


REFUSED = [
    ("/api/v1/meters", meter(slug="calls\n"), "invalid_meter"),
    ("/api/v1/meters", meter(slug=LONG_SLUG), "invalid_meter"),
    ("/api/v1/meters", meter(groupBy={"region\n": "$.region"}), "invalid_meter"),
    ("/api/v1/meters", meter(groupBy={"r" * 65: "$.region"}), "invalid_meter"),
    ("/api/v1/meters", meter(name="x" * 257), "invalid_meter"),
    ("/api/v1/meters", meter(name="two\nlines"), "invalid_meter"),
    ("/api/v1/features", {"key": "tokens\n", "name": "Tokens"}, "invalid_feature"),
    ("/api/v1/features", {"key": LONG_SLUG, "name": "Tokens"}, "invalid_feature"),
    ("/api/v1/features", {"key": "tokens", "name": "T" * 257}, "invalid_feature"),
    ("/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "calls\n"}, "invalid_feature"),
    ("/api/v1/customers", {"key": "acme\n"}, "invalid_customer"),
    ("/api/v1/customers", {"key": "a" * 257}, "invalid_customer"),
    ("/api/v1/customers", {"key": "acme", "subjectKeys": ["acme\n"]}, "invalid_customer"),
    ("/api/v1/customers", {"key": "acme", "subjectKeys": ["a" * 257]}, "invalid_customer"),
    ("/api/v1/billing/plans", plan(plan="pro\n"), "invalid_plan"),
    ("/api/v1/billing/plans", plan(plan=LONG_SLUG), "invalid_plan"),
    ("/api/v1/billing/plans", plan(name="P" * 257), "invalid_plan"),
    ("/api/v1/billing/plans", plan(cards=[FEE | {"key": "fee\n"}]), "invalid_plan"),
    ("/api/v1/billing/plans", plan(cards=[FEE | {"name": "F" * 257}]), "invalid_plan"),
    ("/api/v1/notification/channels", {"type": "LOG", "name": "n" * 257}, "invalid_channel"),
    ("/api/v1/notification/channels", {"type": "LOG", "name": "bell\x07"}, "invalid_channel"),
    ("/api/v1/keys", {"scopes": ["read"], "namespace": "default\n"}, "invalid_namespace"),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from build_api(tmp_path_factory.mktemp("identifiers"))


@pytest.mark.parametrize(("path", "body", "code"), REFUSED, ids=[f"{p}:{i}" for i, (p, _, _) in enumerate(REFUSED)])
def test_identifiers_outside_the_policy_are_refused(api: Api, path: str, body: Any, code: str) -> None:
    r = api.client.post(path, json=body, headers=api.headers())
    assert (r.status_code, r.json().get("code")) == (400, code), r.text
    assert len(r.json()["detail"]) < 1000  # a long identifier is not echoed back whole


def test_nothing_refused_was_stored(api: Api) -> None:
    for path in ("/api/v1/meters", "/api/v1/billing/plans", "/api/v1/customers", "/api/v1/features"):
        body = api.client.get(path, headers=api.headers()).json()
        items = body if isinstance(body, list) else body["items"]
        assert items == [], (path, items)


def test_identifiers_at_the_limits_are_accepted(api: Api) -> None:
    slug = "a" * 64
    ok = [
        ("/api/v1/meters", meter(slug=slug, name="N" * 256, groupBy={"r" * 64: "$.region"})),
        ("/api/v1/features", {"key": slug, "name": "Caf\u00e9 \u2615 " + "x" * 240, "meterSlug": slug}),
        ("/api/v1/customers", {"key": "a" * 256, "subjectKeys": ["user@example.com", "Acme Corp/7"]}),
        ("/api/v1/billing/plans", plan(plan=slug, name="P" * 256, cards=[FEE | {"key": slug}])),
        ("/api/v1/notification/channels", {"type": "LOG", "name": "n" * 256}),
    ]
    for path, body in ok:
        r = api.client.post(path, json=body, headers=api.headers())
        assert r.status_code == 201, (path, r.text)


def test_the_rules_check_the_whole_text() -> None:
    assert is_slug("api_calls") and not is_slug("api_calls\n") and not is_slug("api__calls")
    assert is_group_key("_region") and not is_group_key("region\n") and not is_group_key("1region")
    assert is_key("user@example.com") and not is_key("acme\n") and not is_key("-acme")
    assert is_namespace("team-a") and not is_namespace("team-a\n") and not is_namespace("a" * 64)


def test_the_served_document_states_the_same_rules(api: Api) -> None:
    doc = yaml.safe_load(api.client.get("/api/v1/openapi.yaml").text)
    schemas = doc["components"]["schemas"]
    names = [
        schemas["MeterCreate"]["properties"]["name"],
        schemas["FeatureCreate"]["properties"]["name"],
        schemas["NotificationChannelCreate"]["properties"]["name"],
        schemas["PlanInput"]["properties"]["name"],
        schemas["RateCard"]["properties"]["name"],
    ]
    for name in names:
        assert (name["pattern"], name["maxLength"]) == (f"^{NAME_PATTERN}$", 256)
    for slug in (schemas["MeterCreate"]["properties"]["slug"], schemas["FeatureCreate"]["properties"]["key"]):
        assert slug["maxLength"] == 64


@pytest.mark.parametrize("cadence", ["PT1S", "PT1M", "PT23H59M"])
def test_a_plan_cadence_shorter_than_a_day_is_refused(api: Api, cadence: str) -> None:
    """One invoice per period and subscription: a PT1S plan wrote an invoice per second
    (2,175 from one run of a subscription started 36 minutes earlier)."""
    r = api.client.post("/api/v1/billing/plans", json=plan(plan="fast", cadence=cadence), headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "invalid_plan"), r.text
    assert "at least one day" in r.json()["detail"]


@pytest.mark.parametrize("cadence", ["DAY", "PT24H", "P1DT1H"])
def test_a_plan_cadence_of_a_day_or_more_is_accepted(api: Api, cadence: str) -> None:
    r = api.client.post(
        "/api/v1/billing/plans", json=plan(plan=f"daily_{len(cadence)}", cadence=cadence), headers=api.headers()
    )
    assert r.status_code == 201, r.text
