"""OpenMeter's default sizes of v1 lists asked for without paging parameters: features,
entitlements and grants stop at ``limit`` (default 100, as OpenMeter's handlers set it), an
entitlement's grants and the meters at 1000 (OpenMeter does not page them), and pages default
to 100 items."""

from __future__ import annotations

from typing import Any

from conftest import Api


def post(api: Api, path: str, body: Any) -> Any:
    r = api.client.post(path, json=body, headers=api.headers())
    assert r.status_code == 201, r.text
    return r.json()


def get(api: Api, path: str, **params: Any) -> Any:
    r = api.client.get(path, params=params, headers=api.headers())
    assert r.status_code == 200, r.text
    return r.json()


def test_v1_lists_stop_at_openmeters_default_limit(api: Api) -> None:
    assert api.create_meter(slug="calls", eventType="call", aggregation="COUNT").status_code == 201
    for i in range(105):
        post(api, "/api/v1/features", {"key": f"f{i:03}", "name": f"F{i}"})
    features = get(api, "/api/v1/features")
    assert [f["key"] for f in features] == [f"f{i:03}" for i in range(100)]  # by key, the first 100
    assert [f["key"] for f in get(api, "/api/v1/features", offset=100)] == [f"f{i:03}" for i in range(100, 105)]
    assert len(get(api, "/api/v1/features", limit=105)) == 105
    page = get(api, "/api/v1/features", page=2)
    assert (page["totalCount"], page["page"], page["pageSize"], len(page["items"])) == (105, 2, 100, 5)

    post(api, "/api/v1/features", {"key": "calls", "name": "Calls", "meterSlug": "calls"})
    for i in range(101):
        post(api, "/api/v1/customers", {"key": f"c{i:03}"})
        post(api, f"/api/v1/subjects/c{i:03}/entitlements", {"type": "boolean", "featureKey": "f000"})
    assert len(get(api, "/api/v1/entitlements")) == 100
    assert len(get(api, "/api/v1/entitlements", limit=1000)) == 101
    assert get(api, "/api/v1/entitlements", pageSize=1)["totalCount"] == 101

    metered = {"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "DAY"}}
    post(api, "/api/v1/subjects/c000/entitlements", metered)
    for i in range(101):
        grant = {"amount": i + 1, "effectiveAt": "2026-03-01T12:00:00Z", "expiration": {"duration": "DAY", "count": 1}}
        post(api, "/api/v1/subjects/c000/entitlements/calls/grants", grant)
    assert len(get(api, "/api/v1/grants")) == 100
    assert len(get(api, "/api/v1/grants", limit=200)) == 101
    assert len(get(api, "/api/v1/subjects/c000/entitlements/calls/grants")) == 101  # one array, up to 1000
    assert len(get(api, "/api/v1/subjects")) == 101  # subjects: every one, as OpenMeter lists them
    assert get(api, "/api/v1/customers")["pageSize"] == 100
    assert len(get(api, "/api/v1/customers")["items"]) == 100


def test_meters_list_in_openmeters_order(api: Api) -> None:
    for slug, name, aggregation in (("tokens", "B tokens", "SUM"), ("calls", "C calls", "COUNT"),
                                    ("bytes", "A bytes", "MAX")):  # fmt: skip
        extra = {} if aggregation == "COUNT" else {"valueProperty": "$.n"}
        created = api.create_meter(slug=slug, name=name, eventType="e", aggregation=aggregation, **extra)
        assert created.status_code == 201, created.text
        api.clock.advance(60)
    assert [m["slug"] for m in get(api, "/api/v1/meters")] == ["bytes", "calls", "tokens"]  # by key
    assert [m["slug"] for m in get(api, "/api/v1/meters", orderBy="name", order="DESC")] == ["calls", "tokens", "bytes"]
    assert [m["slug"] for m in get(api, "/api/v1/meters", orderBy="createdAt")] == ["tokens", "calls", "bytes"]
    assert [m["slug"] for m in get(api, "/api/v1/meters", orderBy="aggregation")] == ["calls", "bytes", "tokens"]
    assert [m["slug"] for m in get(api, "/api/v1/meters", page=2, pageSize=1)] == ["bytes", "calls", "tokens"]
    r = api.client.get("/api/v1/meters", params={"orderBy": "slug"}, headers=api.headers())
    assert r.status_code == 400 and r.json()["code"] == "invalid_query", r.text
