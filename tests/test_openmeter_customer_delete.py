"""Deleting a customer as OpenMeter does, against a real server in each storage mode: the customer
is kept with ``deletedAt`` (found by its id, listed with ``includeDeleted=true``), its key and
subject keys are free for a new customer, it cannot be deleted or updated again, and everything
that resolves subjects to customers (entitlements, meter queries, events lists) no longer finds it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from mode_http import http_fixture, ok, server_fixture  # noqa: F401  (fixtures: http, server)

ENTITLEMENT = {"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "MONTH"},
               "measureUsageFrom": "CURRENT_PERIOD_START", "issue": {"amount": 100}}  # fmt: skip


def event(subject: str, n: int, at: datetime) -> dict[str, Any]:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "app", "type": "call", "subject": subject,
            "time": at.isoformat(), "data": {"n": n}}  # fmt: skip


def problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and r.json()["code"] == code, r.text


def test_a_deleted_customer_is_kept_and_its_keys_are_free(http: httpx.Client) -> None:
    meter = {"slug": "calls", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.n"}
    ok(http.post("/api/v1/meters", json=meter), 201)
    ok(http.post("/api/v1/features", json={"key": "calls", "name": "Calls", "meterSlug": "calls"}), 201)
    body = {"key": "acme", "name": "ACME", "usageAttribution": {"subjectKeys": ["acme-app"]}, "currency": "USD"}
    acme = ok(http.post("/api/v1/customers", json=body), 201)
    ok(http.post("/api/v1/customers", json={"key": "globex", "name": "Globex"}), 201)
    ok(http.post("/api/v2/customers/acme/entitlements", json=ENTITLEMENT), 201)
    at = datetime.now(UTC).replace(microsecond=0)
    batch = [event("acme", 1, at), event("acme-app", 2, at)]
    r = http.post("/api/v1/events", json=batch, headers={"Content-Type": "application/cloudevents-batch+json"})
    assert r.status_code == 204, r.text
    assert ok(http.get("/api/v2/customers/acme/entitlements/calls/value"))["usage"] == 3

    assert http.delete("/api/v1/customers/acme").status_code == 204
    problem(http.delete(f"/api/v1/customers/{acme['id']}"), 404, "customer_not_found")  # deleted once only
    problem(http.delete("/api/v1/customers/acme"), 404, "customer_not_found")

    # kept with deletedAt: by its id, and in the list with includeDeleted only
    deleted = ok(http.get(f"/api/v1/customers/{acme['id']}"))
    assert deleted["deletedAt"] >= acme["createdAt"]
    assert (deleted["key"], deleted["name"], deleted["currency"]) == ("acme", "ACME", "USD")
    assert deleted["usageAttribution"] == {"subjectKeys": ["acme-app"]}
    problem(http.get("/api/v1/customers/acme"), 404, "customer_not_found")  # its key names no one
    assert [c["key"] for c in ok(http.get("/api/v1/customers"))["items"]] == ["globex"]
    listed = ok(http.get("/api/v1/customers", params={"includeDeleted": "true"}))
    assert listed["totalCount"] == 2
    assert [(c["key"], c.get("deletedAt")) for c in listed["items"]] == [
        ("acme", deleted["deletedAt"]),
        ("globex", None),
    ]
    assert ok(http.get("/api/v1/customers", params={"includeDeleted": "false"}))["totalCount"] == 1
    problem(http.get("/api/v1/customers", params={"includeDeleted": "maybe"}), 400, "invalid_parameter")
    problem(http.put(f"/api/v1/customers/{acme['id']}", json={"name": "Again"}), 400, "customer_deleted")
    problem(http.put("/api/v1/customers/acme", json={"name": "Again"}), 404, "customer_not_found")

    # absent for everything that resolves customers
    problem(http.get(f"/api/v2/customers/{acme['id']}/entitlements/calls/value"), 404, "customer_not_found")
    problem(http.get("/api/v2/customers/acme/entitlements"), 404, "customer_not_found")
    window = {"from": (at - timedelta(hours=1)).isoformat(), "to": (at + timedelta(hours=1)).isoformat()}
    gone = http.get("/api/v1/meters/calls/query", params={**window, "filterCustomerId": acme["id"]})
    problem(gone, 404, "customer_not_found")
    assert http.get("/api/v1/subjects/acme").status_code == 404
    assert [s["key"] for s in ok(http.get("/api/v1/subjects"))] == ["globex"]

    # the key and the subject key are free: a new customer takes both and the usage they carry
    fresh = ok(
        http.post("/api/v1/customers", json={"key": "acme", "usageAttribution": {"subjectKeys": ["acme-app"]}}), 201
    )
    assert fresh["id"] != acme["id"] and "deletedAt" not in fresh
    assert ok(http.get("/api/v1/customers/acme"))["id"] == fresh["id"]
    assert ok(http.get(f"/api/v1/customers/{acme['id']}"))["deletedAt"] == deleted["deletedAt"]
    ok(http.post("/api/v2/customers/acme/entitlements", json=ENTITLEMENT), 201)
    assert ok(http.get("/api/v2/customers/acme/entitlements/calls/value"))["usage"] == 3
    mine = ok(http.get("/api/v1/meters/calls/query", params={**window, "filterCustomerId": fresh["id"]}))
    assert [(r["customerId"], r["value"]) for r in mine["data"]] == [(fresh["id"], 3)]
    events = ok(http.get("/api/v1/events", params={"customerId": fresh["id"]}))
    assert sorted(e["event"]["subject"] for e in events) == ["acme", "acme-app"]
    keys = [
        (c["id"], c.get("deletedAt") is None)
        for c in ok(http.get("/api/v1/customers", params={"includeDeleted": "1"}))["items"]
    ]
    assert sorted(keys) == sorted([(acme["id"], False), (fresh["id"], True), (listed["items"][1]["id"], True)])


def test_the_unknown_subject_screen_follows_a_delete_and_a_recreate_at_once(http: httpx.Client) -> None:
    """The subjects ingest counts as known change with the commit of a delete and of a new
    customer taking the freed keys, without a restart: events of a deleted customer's key and
    subject key are quarantined right after the delete, and a new customer with the same keys
    releases them and counts them, with what is sent afterwards, as its own."""
    meter = {"slug": "calls", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.n"}
    ok(http.post("/api/v1/meters", json=meter), 201)
    ok(http.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}))
    old = ok(
        http.post("/api/v1/customers", json={"key": "acme", "usageAttribution": {"subjectKeys": ["acme-app"]}}), 201
    )
    at = datetime.now(UTC).replace(microsecond=0)
    report = {"Prefer": "return=representation"}

    def send(*events: dict[str, Any]) -> list[str]:
        r = http.post("/api/v1/events", json=list(events), headers=report)
        return [e["status"] for e in ok(r)["events"]]

    assert send(event("acme", 1, at), event("acme-app", 2, at)) == ["accepted", "accepted"]
    assert http.delete("/api/v1/customers/acme").status_code == 204
    assert send(event("acme", 4, at), event("acme-app", 8, at)) == ["quarantined", "quarantined"]
    held = ok(http.get("/api/v1/quarantine"))["items"]
    assert sorted(h["subject"] for h in held) == ["acme", "acme-app"]

    body = {"key": "acme", "usageAttribution": {"subjectKeys": ["acme-app"]}}
    fresh = ok(http.post("/api/v1/customers", json=body), 201)
    assert fresh["released"] == {"accepted": 2, "rejected": 0}
    assert ok(http.get("/api/v1/quarantine"))["items"] == []
    assert send(event("acme", 16, at), event("acme-app", 32, at)) == ["accepted", "accepted"]
    window = {"from": (at - timedelta(hours=1)).isoformat(), "to": (at + timedelta(hours=1)).isoformat()}
    params = {**window, "filterCustomerId": fresh["id"]}
    mine = ok(http.get("/api/v1/meters/calls/query", params=params))
    assert [(r["customerId"], r["value"]) for r in mine["data"]] == [(fresh["id"], 63)]
    assert fresh["id"] != old["id"]

    # and once more: deleting the new customer frees the keys again at once
    assert http.delete("/api/v1/customers/acme").status_code == 204
    assert send(event("acme", 64, at)) == ["quarantined"]
