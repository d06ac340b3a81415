"""A customer's key changes with ``PUT /api/v1/customers/{customer}`` as in OpenMeter, against a
real server in each storage mode: its id, entitlement and grants stay its own and answer under
the new key, usage keeps its attribution, and a key that names another customer is a 409."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
from mode_http import http_fixture, ok, server_fixture  # noqa: F401  (fixtures: http, server)


def test_a_customer_key_changes_and_everything_follows(http: httpx.Client) -> None:
    ok(http.post("/api/v1/meters", json={"slug": "calls", "eventType": "call", "aggregation": "SUM",
                                          "valueProperty": "$.n"}), 201)  # fmt: skip
    ok(http.post("/api/v1/features", json={"key": "calls", "name": "Calls", "meterSlug": "calls"}), 201)
    acme = ok(http.post("/api/v1/customers", json={"key": "acme", "name": "ACME"}), 201)
    globex_body = {"key": "globex", "usageAttribution": {"subjectKeys": ["g-1"]}}
    globex = ok(http.post("/api/v1/customers", json=globex_body), 201)
    now = datetime.now(UTC).isoformat()
    events = [
        {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "app", "type": "call", "subject": "acme",
         "time": now, "data": {"n": n}}
        for n in (3, 4)
    ]  # fmt: skip
    ingest = http.post("/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"})
    assert ingest.status_code == 204, ingest.text
    body = {"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "MONTH"}, "issue": {"amount": 10}}
    ent = ok(http.post("/api/v2/customers/acme/entitlements", json=body), 201)
    assert ok(http.get("/api/v2/customers/acme/entitlements/calls/value"))["usage"] == 7

    # the key changes; the events' subject stays attributed through usageAttribution
    update = {"key": "acme-inc", "name": "ACME", "usageAttribution": {"subjectKeys": ["acme"]}}
    renamed = ok(http.put("/api/v1/customers/acme", json=update))
    assert (renamed["id"], renamed["key"]) == (acme["id"], "acme-inc")
    assert renamed["usageAttribution"] == {"subjectKeys": ["acme"]}
    assert http.get("/api/v1/customers/acme").status_code == 404
    assert ok(http.get(f"/api/v1/customers/{acme['id']}"))["key"] == "acme-inc"
    moved = ok(http.get("/api/v2/customers/acme-inc/entitlements/calls"))
    assert (moved["id"], moved["customerId"], moved["customerKey"]) == (ent["id"], acme["id"], "acme-inc")
    value = ok(http.get("/api/v2/customers/acme-inc/entitlements/calls/value"))
    assert (value["usage"], value["balance"]) == (7, 3)
    listed = ok(http.get("/api/v2/entitlements"))["items"]
    assert [(e["id"], e["customerKey"]) for e in listed] == [(ent["id"], "acme-inc")]
    assert ok(http.get("/api/v1/subjects/acme/entitlements/calls/value"))["usage"] == 7  # the subject still resolves

    # a key that names another customer, by key, id or subject, is refused and nothing changes
    taken_keys = (("globex", "customer_exists"), (globex["id"], "customer_key_conflict"), ("g-1", "subject_claimed"))
    for taken, code in taken_keys:
        r = http.put(f"/api/v1/customers/{acme['id']}", json={**update, "key": taken})
        assert r.status_code == 409 and r.json()["code"] == code, (taken, r.text)
    assert ok(http.get(f"/api/v1/customers/{acme['id']}"))["key"] == "acme-inc"

    # without usageAttribution the new key is its only subject: the old subject's events leave it (as in OpenMeter)
    ok(http.put(f"/api/v1/customers/{acme['id']}", json={"key": "acme-2"}))
    assert ok(http.get("/api/v2/customers/acme-2/entitlements/calls/value"))["usage"] == 0
