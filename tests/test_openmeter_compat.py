"""OpenMeter's current shapes and rules where they differ from meterline's own: customers in
OpenMeter's shape and pages, a subject seen only in events, deleting a meter that features use,
and OpenMeter paths meterline does not serve."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODES, Api, mode_api

from meterline.api.openmeter_paths import PATHS

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)


@pytest.fixture(params=MODES)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app in each storage mode: these tests hold for both."""
    yield from mode_api(request, tmp_path)


def post(api: Api, path: str, body: Any) -> Any:
    return api.client.post(path, json=body, headers=api.headers())


def get(api: Api, path: str, **params: Any) -> Any:
    return api.client.get(path, params=params, headers=api.headers())


OPENMETER_CUSTOMER = {
    "name": "ACME, Inc.",
    "description": "the first customer",
    "usageAttribution": {"subjectKeys": ["acme-1", "acme-2"]},
    "primaryEmail": "billing@acme.example",
    "currency": "USD",
    "billingAddress": {"country": "US", "city": "Springfield", "line1": "1 Main St"},
    "metadata": {"tier": "gold"},
}


def test_customer_in_openmeters_shape_round_trips(api: Api) -> None:
    r = post(api, "/api/v1/customers", OPENMETER_CUSTOMER)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["key"] and created["id"]
    for member in ("name", "description", "usageAttribution", "primaryEmail", "currency", "billingAddress"):
        assert created[member] == OPENMETER_CUSTOMER[member]
    assert created["subjectKeys"] == ["acme-1", "acme-2"]
    fetched = get(api, f"/api/v1/customers/{created['id']}").json()
    assert fetched["primaryEmail"] == "billing@acme.example" and fetched["key"] == created["key"]
    update = {**OPENMETER_CUSTOMER, "name": "ACME", "currency": "EUR", "usageAttribution": {"subjectKeys": ["acme-1"]}}
    del update["description"]
    r = api.client.put(f"/api/v1/customers/{created['id']}", json=update, headers=api.headers())
    assert r.status_code == 200, r.text
    replaced = r.json()
    assert (replaced["name"], replaced["currency"], replaced["key"]) == ("ACME", "EUR", created["key"])
    assert "description" not in replaced and replaced["usageAttribution"] == {"subjectKeys": ["acme-1"]}


def test_customer_metadata_is_absent_when_unset_or_empty(api: Api) -> None:
    """OpenMeter's server leaves a customer's unset (or empty) metadata out; never ``null``."""
    plain = post(api, "/api/v1/customers", {"key": "plain"})
    assert plain.status_code == 201, plain.text
    empty = post(api, "/api/v1/customers", {"key": "empty", "metadata": {}})
    tagged = post(api, "/api/v1/customers", {"key": "tagged", "metadata": {"tier": "gold"}})
    assert "metadata" not in plain.json() and "metadata" not in empty.json()
    assert tagged.json()["metadata"] == {"tier": "gold"}
    for key in ("plain", "empty"):
        assert "metadata" not in get(api, f"/api/v1/customers/{key}").json()
    listed = {c["key"]: c for c in get(api, "/api/v1/customers").json()["items"]}
    assert [k for k, c in sorted(listed.items()) if "metadata" in c] == ["tagged"]
    cleared = api.client.put("/api/v1/customers/tagged", json={"key": "tagged"}, headers=api.headers())
    assert cleared.status_code == 200 and "metadata" not in cleared.json(), cleared.text
    assert api.client.delete("/api/v1/customers/plain", headers=api.headers()).status_code == 204
    deleted = [c for c in get(api, "/api/v1/customers", includeDeleted="true").json()["items"] if "deletedAt" in c]
    assert [c["key"] for c in deleted] == ["plain"] and "metadata" not in deleted[0]


def test_subject_display_name_and_metadata_are_absent_when_unset(api: Api) -> None:
    """As OpenMeter maps a subject: no displayName or metadata member when not set (never null)."""
    body = [
        {"key": "bare"},
        {"key": "named", "displayName": "Named", "metadata": {"crm": "42"}},
        {"key": "e", "metadata": {}},
    ]
    r = post(api, "/api/v1/subjects", body)
    assert r.status_code == 200, r.text
    bare, named, empty = r.json()
    assert set(bare) == {"id", "key", "createdAt", "updatedAt"}, bare
    assert (named["displayName"], named["metadata"]) == ("Named", {"crm": "42"})
    assert empty["metadata"] == {} and "displayName" not in empty
    assert set(get(api, "/api/v1/subjects/bare").json()) == {"id", "key", "createdAt", "updatedAt"}
    listed = {s["key"]: s for s in get(api, "/api/v1/subjects").json()}
    assert "displayName" not in listed["bare"] and "metadata" not in listed["bare"]
    assert listed["named"]["displayName"] == "Named"


def test_customer_list_is_openmeters_page(api: Api) -> None:
    for i in range(5):
        body = {
            "key": f"c{i}",
            "name": f"Customer {4 - i}",
            "subjectKeys": [f"s{i}"],
            "primaryEmail": f"c{i}@x.example",
        }
        assert post(api, "/api/v1/customers", body).status_code == 201
    page = get(api, "/api/v1/customers", page=2, pageSize=2).json()
    assert (page["totalCount"], page["page"], page["pageSize"]) == (5, 2, 2)
    assert [c["key"] for c in page["items"]] == ["c2", "c3"]
    by_name = get(api, "/api/v1/customers", orderBy="name", order="DESC").json()["items"]
    assert [c["key"] for c in by_name] == ["c0", "c1", "c2", "c3", "c4"]
    assert [c["key"] for c in get(api, "/api/v1/customers", subject="S3").json()["items"]] == ["c3"]
    assert [c["key"] for c in get(api, "/api/v1/customers", primaryEmail="c4@").json()["items"]] == ["c4"]
    assert get(api, "/api/v1/customers", key="nobody").json() == {
        "totalCount": 0,
        "page": 1,
        "pageSize": 100,
        "items": [],
    }
    assert get(api, "/api/v1/customers", orderBy="colour").status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"key": "a", "subjectKeys": ["x"], "usageAttribution": {"subjectKeys": ["y"]}},
        {"key": "a", "usageAttribution": {"subjectKeys": []}},
        {"key": "a", "currency": "XXQ"},
        {"key": "a", "usageAttribution": {"subjects": ["x"]}},
    ],
)
def test_invalid_openmeter_customer_members(api: Api, body: dict[str, Any]) -> None:
    r = post(api, "/api/v1/customers", body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_customer"


def _metered(api: Api) -> None:
    assert api.create_meter(slug="calls", eventType="call", aggregation="COUNT").status_code == 201
    assert post(api, "/api/v1/features", {"key": "calls", "name": "Calls", "meterSlug": "calls"}).status_code == 201


def test_subject_seen_only_in_events_is_not_registered(api: Api) -> None:
    """As in OpenMeter: events do not register a subject; the subject upsert does (and gives
    it a customer), after which its entitlements can be created."""
    _metered(api)
    event = {"specversion": "1.0", "id": "e1", "source": "t", "type": "call", "subject": "walk-in"}
    assert api.post_events([event]).status_code == 204
    entitlement = {"type": "metered", "featureKey": "calls", "issueAfterReset": 10, "usagePeriod": {"interval": "DAY"}}
    r = post(api, "/api/v1/subjects/walk-in/entitlements", entitlement)
    assert r.status_code == 404 and r.json()["code"] == "subject_not_found", r.text
    assert "POST /api/v1/subjects" in r.json()["detail"]
    assert get(api, "/api/v1/subjects/walk-in/entitlements/calls/value").json()["code"] == "subject_not_found"
    assert post(api, "/api/v1/subjects", [{"key": "walk-in"}]).status_code == 200
    assert post(api, "/api/v1/subjects/walk-in/entitlements", entitlement).status_code == 201
    value = get(api, "/api/v1/subjects/walk-in/entitlements/calls/value").json()
    assert (value["hasAccess"], value["usage"], value["balance"]) == (True, 1, 9)


def test_meter_used_by_a_feature_cannot_be_deleted(api: Api) -> None:
    _metered(api)
    r = api.client.delete("/api/v1/meters/calls", headers=api.headers())
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "meter_in_use" and r.json()["features"] == ["calls"]
    assert get(api, "/api/v1/meters/calls").status_code == 200
    assert api.client.delete("/api/v1/features/calls", headers=api.headers()).status_code == 204
    assert api.client.delete("/api/v1/meters/calls", headers=api.headers()).status_code == 204


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("GET", "/api/v1/addons", "listAddons"),
        ("POST", "/api/v1/apps/custom-invoicing/inv1/draft/synchronized", "appCustomInvoicingDraftSynchronized"),
        ("GET", "/api/v1/info/currencies", "listCurrencies"),
        # OpenMeter's product catalog and billing: meterline's own live under /api/v1/billing/...
        ("GET", "/api/v1/plans", "listPlans"),
        ("POST", "/api/v1/plans", "createPlan"),
        ("GET", "/api/v1/plans/pro", "getPlan"),
        ("POST", "/api/v1/subscriptions", "createSubscription"),
        ("GET", "/api/v1/subscriptions/s1", "getSubscription"),
        ("POST", "/api/v1/subscriptions/s1/cancel", "cancelSubscription"),
        ("GET", "/api/v1/billing/invoices", "listInvoices"),
        ("GET", "/api/v1/customers/acme/subscriptions", "listCustomerSubscriptions"),
    ],
)
def test_openmeter_paths_not_served_say_so(api: Api, method: str, path: str, operation: str) -> None:
    r = api.client.request(method, path, json={}, headers=api.headers())
    assert r.status_code == 501, r.text
    body = r.json()
    assert body["code"] == "not_supported" and "OpenMeter" in body["detail"]
    assert body["operation"] == operation and operation in body["detail"]


def test_meterlines_own_billing_does_not_answer_on_openmeters_paths(api: Api) -> None:
    plan = {"plan": "pro", "currency": "USD", "charges": []}
    assert post(api, "/api/v1/plans", plan).status_code == 501
    assert get(api, "/api/v1/billing/plans").json() == []
    assert get(api, "/api/v1/plans").json()["operation"] == "listPlans"


def test_every_openmeter_operation_is_served_or_not_supported(api: Api) -> None:
    """Each operation of OpenMeter's document reaches a handler (any answer of its own, a 404
    for a missing entity included) or is a 501 naming it: never a routing 404 or 405."""
    for template, methods in PATHS.items():
        path = re.sub(r"\{[^}]+\}", "x1", template)
        for method, operation in methods.items():
            r = api.client.request(method, path, json={}, headers=api.headers())
            body = r.json() if r.headers.get("content-type") == "application/problem+json" else {}
            assert body.get("code") not in ("not_found", "method_not_allowed"), (method, template, r.text)
            if r.status_code == 501:
                assert body["operation"] == operation


def test_other_unknown_paths_are_still_404(api: Api) -> None:
    r = api.client.get("/api/v1/no-such-thing", headers=api.headers())
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_meter_update_as_openmeter_defines_it(api: Api) -> None:
    spec = {
        "slug": "tokens",
        "eventType": "prompt",
        "aggregation": "SUM",
        "valueProperty": "$.n",
        "groupBy": {"model": "$.model"},
    }
    created = api.create_meter(**spec).json()
    events = [
        {"specversion": "1.0", "id": f"t{i}", "source": "app", "type": "prompt", "subject": "acme",
         "data": {"n": i, "model": "m1" if i % 2 else "m2"}}
        for i in range(1, 5)
    ]  # fmt: skip
    assert api.post_events(events).status_code == 204
    before = get(api, "/api/v1/meters/tokens/query", groupBy="model").json()["data"]
    api.clock.advance(5)
    update = {
        "name": "Tokens total",
        "description": "AI tokens",
        "metadata": {"team": "ml"},
        "groupBy": {"model": "$.model"},
    }
    r = api.client.put(f"/api/v1/meters/{created['id']}", json=update, headers=api.headers())
    assert r.status_code == 200, r.text
    meter = r.json()
    assert (meter["name"], meter["description"], meter["metadata"]) == ("Tokens total", "AI tokens", {"team": "ml"})
    assert (meter["slug"], meter["aggregation"], meter["groupBy"]) == ("tokens", "SUM", {"model": "$.model"})
    assert meter["createdAt"] == created["createdAt"] and meter["updatedAt"] > created["updatedAt"]
    assert get(api, "/api/v1/meters/tokens").json() == meter
    assert get(api, "/api/v1/meters/tokens/query", groupBy="model").json()["data"] == before  # usage unchanged
    # a PUT replaces: without name the name is the slug, without description or metadata none
    r = api.client.put("/api/v1/meters/tokens", json={"groupBy": {"model": "$.model"}}, headers=api.headers())
    assert r.status_code == 200 and r.json()["name"] == "tokens" and "description" not in r.json()  # as OpenMeter
    assert "metadata" not in r.json()
    # a different groupBy re-derives the meter from the ledger in both modes
    # (tests/test_openmeter_meter_group_by.py)
    r = api.client.put("/api/v1/meters/tokens", json={"aggregation": "COUNT"}, headers=api.headers())
    assert r.status_code == 400, r.text
    r = api.client.put(
        "/api/v1/meters/tokens", json={"name": "", "groupBy": {"model": "$.model"}}, headers=api.headers()
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_meter", r.text
    r = api.client.put("/api/v1/meters/nothing", json={}, headers=api.headers())
    assert r.status_code == 404 and r.json()["code"] == "meter_not_found"
