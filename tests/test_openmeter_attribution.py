"""A customer's usage as OpenMeter attributes it, against a real server in each storage mode:
the events of its key and of its ``usageAttribution.subjectKeys`` count, in entitlement values
(v1 subject paths and v2 customer paths), meter queries filtered by ``filterCustomerId`` (GET,
POST and CSV) and the events lists; a subject that is one customer's key and another's subject
key counts for both, and an event of it names the keyed customer (key over subject)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from mode_http import http_fixture, ok, server_fixture  # noqa: F401  (fixtures: http, server)


def event(subject: str, n: int, region: str, at: datetime) -> dict[str, Any]:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "app", "type": "call", "subject": subject,
            "time": at.isoformat(), "data": {"n": n, "region": region}}  # fmt: skip


def rows(answer: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(r.get("customerId"), r["subject"], r["groupBy"].get("region"), r["value"]) for r in answer["data"]]


def test_usage_of_the_customer_key_and_its_subject_keys(http: httpx.Client) -> None:
    meter = {"slug": "calls", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.n",
             "groupBy": {"region": "$.region"}}  # fmt: skip
    ok(http.post("/api/v1/meters", json=meter), 201)
    ok(http.post("/api/v1/features", json={"key": "calls", "name": "Calls", "meterSlug": "calls"}), 201)
    acme_body = {"key": "acme", "name": "ACME", "usageAttribution": {"subjectKeys": ["acme-app", "acme-batch"]}}
    acme = ok(http.post("/api/v1/customers", json=acme_body), 201)
    globex = ok(http.post("/api/v1/customers", json={"key": "globex", "name": "Globex"}), 201)
    for customer in ("acme", "globex"):
        body = {"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "MONTH"},
                "measureUsageFrom": "CURRENT_PERIOD_START", "issue": {"amount": 100}}  # fmt: skip
        ok(http.post(f"/api/v2/customers/{customer}/entitlements", json=body), 201)
    at = datetime.now(UTC).replace(microsecond=0)
    sent = [("acme", 1, "eu"), ("acme-app", 2, "eu"), ("acme-batch", 4, "us"), ("globex", 8, "us"), ("stray", 16, "eu")]
    batch = [event(s, n, r, at) for s, n, r in sent]
    r = http.post("/api/v1/events", json=batch, headers={"Content-Type": "application/cloudevents-batch+json"})
    assert r.status_code == 204, r.text

    # entitlement values: the key's events (1) count beside the subject keys' (2 + 4)
    assert ok(http.get("/api/v2/customers/acme/entitlements/calls/value"))["usage"] == 7
    assert ok(http.get(f"/api/v2/customers/{acme['id']}/entitlements/calls/value"))["balance"] == 93
    assert ok(http.get("/api/v1/subjects/acme-app/entitlements/calls/value"))["usage"] == 7
    assert ok(http.get("/api/v1/customers/acme/entitlements/calls/value"))["usage"] == 7
    assert ok(http.get("/api/v2/customers/globex/entitlements/calls/value"))["usage"] == 8

    # meter queries scoped by filterCustomerId: one row set per customer, naming it
    window = {"from": (at - timedelta(hours=1)).isoformat(), "to": (at + timedelta(hours=1)).isoformat()}
    one = ok(http.get("/api/v1/meters/calls/query", params={**window, "filterCustomerId": acme["id"]}))
    assert rows(one) == [(acme["id"], None, None, 7)]
    both = ok(http.get("/api/v1/meters/calls/query", params={**window, "filterCustomerId": [acme["id"], "globex"]}))
    assert rows(both) == [(acme["id"], None, None, 7), (globex["id"], None, None, 8)]
    split = {**window, "filterCustomerId": acme["id"], "subject": ["acme", "stray", "acme-batch"]}
    assert sorted(rows(ok(http.get("/api/v1/meters/calls/query", params=split)))) == [
        (acme["id"], "acme", None, 1),
        (acme["id"], "acme-batch", None, 4),
    ]  # only the customer's subjects among those asked, split by subject
    body = {**window, "filterCustomerId": [acme["id"]], "groupBy": ["customer_id", "region"]}
    assert sorted(rows(ok(http.post("/api/v1/meters/calls/query", json=body)))) == [
        (acme["id"], None, "eu", 3),
        (acme["id"], None, "us", 4),
    ]
    plain = ok(http.get("/api/v1/meters/calls/query", params={**window, "groupBy": "customer_id"}))
    assert rows(plain) == [(None, None, None, 31)]  # no customer filter: every subject, as before
    csv = http.get("/api/v1/meters/calls/query", params={**window, "filterCustomerId": "globex"},
                   headers={"Accept": "text/csv"})  # fmt: skip
    assert csv.status_code == 200 and csv.text.splitlines()[0] == "window_start,window_end,subject,customer_id,value"
    assert csv.text.splitlines()[1].endswith(f",,{globex['id']},8")
    missing = http.get("/api/v1/meters/calls/query", params={"filterCustomerId": "nobody"})
    assert missing.status_code == 404 and missing.json()["code"] == "customer_not_found", missing.text

    # events lists: a customer's events are those of its key and subject keys
    v1 = ok(http.get("/api/v1/events", params={"customerId": acme["id"]}))
    assert sorted(e["event"]["subject"] for e in v1) == ["acme", "acme-app", "acme-batch"]
    assert {e["customerId"] for e in v1} == {acme["id"]}
    flt = json.dumps({"customerId": {"$eq": acme["id"]}})
    v2 = ok(http.get("/api/v2/events", params={"filter": flt}))["items"]
    assert sorted(e["event"]["subject"] for e in v2) == ["acme", "acme-app", "acme-batch"]

    # another customer may claim the subject "acme" (a key, not a subject key): both count it,
    # and an event of it names the customer keyed "acme", as OpenMeter resolves it
    ok(http.post("/api/v1/customers", json={"key": "initech", "usageAttribution": {"subjectKeys": ["acme"]}}), 201)
    body = {"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "MONTH"},
            "measureUsageFrom": "CURRENT_PERIOD_START", "issue": {"amount": 100}}  # fmt: skip
    ok(http.post("/api/v2/customers/initech/entitlements", json=body), 201)
    assert ok(http.get("/api/v2/customers/initech/entitlements/calls/value"))["usage"] == 1
    assert ok(http.get("/api/v2/customers/acme/entitlements/calls/value"))["usage"] == 7
    listed = ok(http.get("/api/v1/events", params={"subject": "acme"}))  # a partial match, as in OpenMeter
    assert [e["customerId"] for e in listed if e["event"]["subject"] == "acme"] == [acme["id"]]
