"""meterline's own request bodies refuse members they do not know (400 naming the member), so a
misspelt or unsupported option never silently does nothing: ``{"scopes": ["read"], "expiresAt":
...}`` on key creation made a key that never expires. Bodies in OpenMeter's shapes stay
tolerant, as OpenMeter's SDKs send members of newer API versions (tests/test_openmeter_sdk*.py)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Api, build_api

PLAN: dict[str, Any] = {
    "plan": "pro",
    "currency": "USD",
    "cards": [
        {"key": "fee", "name": "Fee", "model": {"model": "flat", "amount": "49"}},
        {
            "key": "api",
            "name": "API calls",
            "meter": "api_calls",
            "model": {"model": "graduated", "tiers": [{"upTo": "1000", "unitPrice": "0"}, {"unitPrice": "0.01"}]},
        },
    ],
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    for api in build_api(tmp_path_factory.mktemp("unknown")):
        r = api.create_meter(slug="api_calls", eventType="request", aggregation="COUNT")
        assert r.status_code == 201, r.text
        yield api


def _plan_with(path: list[Any], member: str) -> dict[str, Any]:
    plan = copy.deepcopy(PLAN)
    node: Any = plan
    for step in path:
        node = node[step]
    node[member] = "x"
    return plan


OWN = [
    ("POST", "/api/v1/keys", {"scopes": ["read"], "expiresAt": "2030-01-01T00:00:00Z"}, "expiresAt"),
    ("POST", "/api/v1/billing/plans", _plan_with([], "trialDays"), "trialDays"),
    ("POST", "/api/v1/billing/plans", _plan_with(["cards", 0], "freeUnit"), "freeUnit"),
    ("POST", "/api/v1/billing/plans", _plan_with(["cards", 1, "model"], "unitprice"), "unitprice"),
    ("POST", "/api/v1/billing/plans", _plan_with(["cards", 1, "model", "tiers", 0], "upto"), "upto"),
    ("POST", "/api/v1/customers", {"key": "acme", "subjects": ["a"]}, "subjects"),
    ("PUT", "/api/v1/settings", {"unknownSubjects": "accept", "strict": True}, "strict"),
    ("POST", "/api/v1/entitlements/check", {"customer": "acme", "features": [], "dryRun": True}, "dryRun"),
]


@pytest.mark.parametrize(("method", "path", "body", "member"), OWN, ids=[f"{p}:{m}" for _, p, _, m in OWN])
def test_own_bodies_refuse_unknown_members(api: Api, method: str, path: str, body: Any, member: str) -> None:
    r = api.client.request(method, path, json=body, headers=api.headers())
    assert r.status_code == 400, r.text
    assert r.json()["code"].startswith("invalid_"), r.text
    assert f"unknown field `{member}`" in r.json()["detail"]


def test_nothing_was_made_by_a_refused_body(api: Api) -> None:
    keys = api.client.get("/api/v1/keys", headers=api.headers()).json()
    assert [k["name"] for k in keys] == ["test"]  # only the fixture's own key
    assert api.client.get("/api/v1/billing/plans", headers=api.headers()).json() == []


def test_the_same_bodies_without_the_member_are_accepted(api: Api) -> None:
    r = api.client.post("/api/v1/keys", json={"scopes": ["read"]}, headers=api.headers())
    assert r.status_code == 201, r.text
    r = api.client.post("/api/v1/billing/plans", json=PLAN, headers=api.headers())
    assert r.status_code == 201, r.text


def test_rotating_a_secret_refuses_unknown_members(api: Api) -> None:
    body = {"type": "WEBHOOK", "name": "h", "url": "https://example.com/h"}
    channel = api.client.post("/api/v1/notification/channels", json=body, headers=api.headers()).json()
    path = f"/api/v1/notification/channels/{channel['id']}/rotate-secret"
    r = api.client.post(path, json={"secret": "whsec_" + "A" * 40}, headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "invalid_rotation_request"), r.text
    assert "unknown field `secret`" in r.json()["detail"]


def test_openmeter_shaped_bodies_stay_tolerant(api: Api) -> None:
    r = api.client.post(
        "/api/v1/features",
        json={"key": "calls", "name": "Calls", "meterSlug": "api_calls", "unitCost": None, "newerOption": 1},
        headers=api.headers(),
    )
    assert r.status_code == 201, r.text
    r = api.client.post(
        "/api/v1/subjects", json=[{"key": "s1", "stripeCustomerId": "cus_1", "newer": True}], headers=api.headers()
    )
    assert r.status_code == 200, r.text
