"""OpenMeter's /api/v2 paths: customer entitlements (with v2's `issue` and `grants`), their
grants, values and pages, the entitlement and grant lists, and the cursor-paged events list."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODES, T0_US, Api, mode_api

from meterline.domain.clock import rfc3339

ULID_PATTERN = r"[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}"  # OpenMeter's pattern of ids


def post(api: Api, path: str, body: Any) -> Any:
    return api.client.post(path, json=body, headers=api.headers())


def get(api: Api, path: str, **params: Any) -> Any:
    r = api.client.get(path, params=params, headers=api.headers())
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def setup(api: Api) -> Api:
    return seed(api)


def seed(api: Api) -> Api:
    """A SUM meter `calls` with a feature, a boolean feature `sso`, customers acme (14 calls)
    and globex (6)."""
    assert api.create_meter(slug="calls", eventType="call", aggregation="SUM", valueProperty="$.n").status_code == 201
    assert post(api, "/api/v1/features", {"key": "calls", "name": "Calls", "meterSlug": "calls"}).status_code == 201
    assert post(api, "/api/v1/features", {"key": "sso", "name": "SSO"}).status_code == 201
    for key in ("acme", "globex"):
        assert post(api, "/api/v1/customers", {"key": key, "name": key.title()}).status_code == 201
    events = [
        {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "app" if i % 2 else "batch",
            "type": "call",
            "subject": "acme" if i < 7 else "globex",
            "time": rfc3339(T0_US - (10 - i) * 60_000_000),
            "data": {"n": 2},
        }
        for i in range(10)
    ]
    assert api.post_events(events).status_code == 204
    return api


def test_v2_customer_entitlement_with_issue_and_grants(setup: Api) -> None:
    api = setup
    body = {
        "type": "metered",
        "featureKey": "calls",
        "usagePeriod": {"interval": "MONTH"},
        "measureUsageFrom": "CURRENT_PERIOD_START",
        "issue": {"amount": 10, "priority": 3},
        "grants": [{"amount": 5, "effectiveAt": "2026-03-01T00:00:00Z"}],
    }
    r = post(api, "/api/v2/customers/acme/entitlements", body)
    assert r.status_code == 201, r.text
    ent = r.json()
    customer = get(api, "/api/v1/customers/acme")
    assert (ent["customerId"], ent["customerKey"], ent["issueAfterReset"]) == (customer["id"], "acme", 10)
    assert ent["issueAfterResetPriority"] == 3
    value = get(api, f"/api/v2/customers/{customer['id']}/entitlements/calls/value")
    assert (value["hasAccess"], value["usage"], value["balance"]) == (True, 14, 1)
    grants = get(api, "/api/v2/customers/acme/entitlements/calls/grants")
    assert grants["totalCount"] == 2  # as OpenMeter, `issue` is a grant of its own, listed
    (sent,) = [g for g in grants["items"] if "annotations" not in g]
    assert sent["amount"] == 5
    assert "expiration" not in sent and "expiresAt" not in sent  # never expires, as in OpenMeter (no null there)
    r = post(
        api, "/api/v2/customers/acme/entitlements/calls/grants", {"amount": 20, "effectiveAt": "2026-03-01T00:00:00Z"}
    )
    assert r.status_code == 201, r.text
    assert get(api, "/api/v2/customers/acme/entitlements/calls/value")["balance"] == 21
    assert get(api, "/api/v2/customers/acme/entitlements/calls")["id"] == ent["id"]
    history = get(api, "/api/v2/customers/acme/entitlements/calls/history", windowSize="DAY")
    assert sum(w["usage"] for w in history["windowedHistory"]) == 14


@pytest.fixture(params=MODES)
def seeded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    for api in mode_api(request, tmp_path):
        yield seed(api)


def test_issue_after_reset_is_listed_as_the_grant_openmeter_creates_for_it(seeded: Api) -> None:
    """OpenMeter's ``AfterCreate`` issues a grant for ``issueAfterReset`` (annotated
    ``issueAfterReset``): the amount at ``issueAfterResetPriority``, effective from the start of
    measurement, never expiring, rolled over to its amount; every grants list shows it, and the
    burndown names it by the same id."""
    api = seeded
    body = {
        "type": "metered",
        "featureKey": "calls",
        "usagePeriod": {"interval": "MONTH"},
        "measureUsageFrom": "CURRENT_PERIOD_START",
        "issueAfterReset": 10,
    }
    r = post(api, "/api/v1/subjects/acme/entitlements", body)
    assert r.status_code == 201, r.text
    ent = r.json()
    r = post(api, "/api/v1/subjects/globex/entitlements", {**body, "issueAfterReset": 0})  # 0: no grant
    assert r.status_code == 201, r.text
    (listed,) = get(api, "/api/v1/subjects/acme/entitlements/calls/grants")
    # a ULID of its own, as OpenMeter's grant ids are (clients check the pattern), stable
    assert re.fullmatch(ULID_PATTERN, listed["id"]) and listed["id"] not in (ent["id"], listed["entitlementId"])
    expected = {
        "id": listed["id"],
        "entitlementId": ent["id"],
        "annotations": {"issueAfterReset": True},
        "amount": 10,
        "priority": 1,
        "effectiveAt": "2026-03-01T00:00:00.000Z",
        "expiration": None,
        "expiresAt": None,
        "maxRolloverAmount": 10,
        "minRolloverAmount": 10,
        "voidedAt": None,
    }
    # OpenMeter's v1 shape requires an expiration: a grant that never expires shows 100 years
    v1 = expected | {"expiration": {"duration": "YEAR", "count": 100}, "expiresAt": "2126-03-01T00:00:00.000Z"}

    def shown(g: dict[str, Any]) -> dict[str, Any]:
        return {k: g.get(k) for k in expected}

    assert shown(listed) == v1
    assert [shown(g) for g in get(api, "/api/v1/grants")] == [v1]
    assert [shown(g) for g in get(api, "/api/v1/grants", subject="acme", feature="calls")] == [v1]
    assert get(api, "/api/v1/grants", subject="globex") == get(api, "/api/v1/grants", feature="sso") == []
    assert [shown(g) for g in get(api, "/api/v2/customers/acme/entitlements/calls/grants")["items"]] == [expected]
    assert [shown(g) for g in get(api, "/api/v2/grants", customer="acme")["items"]] == [expected]
    assert get(api, "/api/v2/grants", customer="globex")["totalCount"] == 0
    history = get(api, "/api/v1/subjects/acme/entitlements/calls/history", windowSize="DAY")
    used = [u for seg in history["burndownHistory"] for u in seg["grantUsages"]]
    assert {u["grantId"] for u in used} == {expected["id"]} and sum(u["usage"] for u in used) == 10  # 14 used
    r = api.client.delete(f"/api/v1/grants/{expected['id']}", headers=api.headers())
    assert r.status_code == 204, r.text  # voided like any grant, as OpenMeter voids it
    assert get(api, "/api/v1/subjects/acme/entitlements/calls/grants") == []
    (voided,) = get(api, "/api/v1/subjects/acme/entitlements/calls/grants", includeDeleted="true")
    assert voided["voidedAt"] == "2026-03-01T12:00:00.000Z"
    r = api.client.delete(f"/api/v1/grants/{expected['id']}", headers=api.headers())
    assert r.status_code == 409 and r.json()["code"] == "grant_voided", r.text
    # the id it had before it was a ULID still names it
    r = api.client.delete(f"/api/v1/grants/{ent['id']}.issueAfterReset", headers=api.headers())
    assert r.status_code == 409 and r.json()["code"] == "grant_voided", r.text
    # voided, it no longer counts: globex's 6 calls against 100, then against nothing
    r = api.client.put(
        "/api/v1/subjects/globex/entitlements/calls/override",
        json={**body, "issueAfterReset": 100},
        headers=api.headers(),
    )
    assert r.status_code == 201, r.text
    value = "/api/v1/subjects/globex/entitlements/calls/value"
    assert (get(api, value)["balance"], get(api, value)["hasAccess"]) == (94, True)
    issued = [g for g in get(api, "/api/v1/subjects/globex/entitlements/calls/grants") if "annotations" in g]
    r = api.client.delete(f"/api/v1/grants/{issued[0]['id']}", headers=api.headers())
    assert r.status_code == 204, r.text
    assert (get(api, value)["balance"], get(api, value)["hasAccess"]) == (0, False)


def test_v2_lists_are_pages(setup: Api) -> None:
    api = setup
    for key in ("acme", "globex"):
        assert (
            post(api, f"/api/v2/customers/{key}/entitlements", {"type": "boolean", "featureKey": "sso"}).status_code
            == 201
        )
    page = get(api, "/api/v2/customers/acme/entitlements")
    assert (page["totalCount"], page["page"], page["pageSize"]) == (1, 1, 100)
    assert page["items"][0]["type"] == "boolean"
    everything = get(api, "/api/v2/entitlements", pageSize=1, page=2)
    assert (everything["totalCount"], len(everything["items"])) == (2, 1)
    only = get(api, "/api/v2/entitlements", customerKeys="globex")
    assert [e["customerKey"] for e in only["items"]] == ["globex"]
    bad = api.client.get("/api/v2/entitlements", params={"entitlementType": "AAA"}, headers=api.headers())
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_query"
    ent_id = only["items"][0]["id"]
    assert get(api, f"/api/v2/entitlements/{ent_id}")["customerKey"] == "globex"
    assert get(api, "/api/v2/grants") == {"totalCount": 0, "page": 1, "pageSize": 100, "items": []}
    r = api.client.delete("/api/v2/customers/acme/entitlements/sso", headers=api.headers())
    assert r.status_code == 204
    assert get(api, "/api/v2/customers/acme/entitlements")["totalCount"] == 0


def test_v2_events_filter_and_cursor(setup: Api) -> None:
    api = setup
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, "filter": json.dumps({"subject": {"$eq": "acme"}})}
        if cursor is not None:
            params["cursor"] = cursor
        page = get(api, "/api/v2/events", **params)
        ids += [item["event"]["id"] for item in page["items"]]
        cursor = page.get("nextCursor")
        if cursor is None:
            break
    assert ids == [f"e{i}" for i in range(6, -1, -1)]
    f = {"source": {"$like": "ap%"}, "time": {"$gte": rfc3339(T0_US - 5 * 60_000_000)}}
    found = get(api, "/api/v2/events", filter=json.dumps(f))["items"]
    assert [item["event"]["id"] for item in found] == ["e9", "e7", "e5"]
    acme = get(api, "/api/v1/customers/acme")["id"]
    by_customer = get(api, "/api/v2/events", filter=json.dumps({"customerId": {"$eq": acme}}))
    assert len(by_customer["items"]) == 7 and "nextCursor" not in by_customer
    r = api.client.get("/api/v2/events", params={"filter": '{"colour": {"$eq": "red"}}'}, headers=api.headers())
    assert r.status_code == 400 and r.json()["code"] == "invalid_filter"


def test_grant_lists_honour_order_by_and_order(setup: Api) -> None:
    api = setup
    body = {"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "MONTH"}}
    r = post(api, "/api/v2/customers/acme/entitlements", body)
    assert r.status_code == 201, r.text
    created = []
    # created 0.5 s apart (a fraction of a second: times must compare as instants, not as text),
    # effective in the opposite order (within the current usage period: OpenMeter refuses a grant before it)
    for amount, effective in ((1, "2026-03-03T00:00:00Z"), (2, "2026-03-02T00:00:00Z"), (3, "2026-03-01T13:00:00Z")):
        grant = {"amount": amount, "effectiveAt": effective}
        r = post(api, "/api/v2/customers/acme/entitlements/calls/grants", grant)
        assert r.status_code == 201, r.text
        created.append(r.json()["id"])
        api.clock.advance(0.5)

    def amounts(path: str, **params: Any) -> list[int]:
        found = get(api, path, **params)
        return [g["amount"] for g in (found["items"] if isinstance(found, dict) else found)]

    for path in ("/api/v2/grants", "/api/v2/customers/acme/entitlements/calls/grants", "/api/v1/grants"):
        assert amounts(path) == [3, 2, 1]  # OpenMeter's default: by effectiveAt
        assert amounts(path, orderBy="createdAt") == [1, 2, 3]
        assert amounts(path, orderBy="createdAt", order="DESC") == [3, 2, 1]
        assert amounts(path, orderBy="updatedAt", order="DESC") == [3, 2, 1]
        by_id = [g for _, g in sorted(zip(created, (1, 2, 3), strict=True))]
        assert amounts(path, orderBy="id") == by_id
    assert amounts("/api/v2/grants", orderBy="createdAt", order="DESC", pageSize=2, page=2) == [1]
    assert amounts("/api/v1/grants", orderBy="createdAt", offset=1, limit=1) == [2]
    page = get(api, "/api/v1/grants", orderBy="createdAt", page=1, pageSize=2)
    assert (page["totalCount"], [g["amount"] for g in page["items"]]) == (3, [1, 2])
    for params in ({"orderBy": "amount"}, {"order": "UP"}):
        r = api.client.get("/api/v2/grants", params=params, headers=api.headers())
        assert r.status_code == 400 and r.json()["code"] == "invalid_query", r.text
    # a bad limit or offset is refused even beside page parameters, a repeated one too
    for path in ("/api/v2/grants", "/api/v1/grants", "/api/v1/features"):
        for params in ({"pageSize": 1, "limit": -1}, {"pageSize": 1, "offset": "x"}, {"limit": [1, 2]}):
            r = api.client.get(path, params=params, headers=api.headers())
            assert r.status_code == 400 and r.json()["code"] == "invalid_parameter", (path, params, r.text)


def test_entitlement_and_feature_lists_honour_order(setup: Api) -> None:
    api = setup
    for key in ("globex", "acme"):
        assert (
            post(api, f"/api/v2/customers/{key}/entitlements", {"type": "boolean", "featureKey": "sso"}).status_code
            == 201
        )
        api.clock.advance(1)
    keys = [e["customerKey"] for e in get(api, "/api/v2/entitlements")["items"]]
    assert keys == ["globex", "acme"]
    keys = [e["customerKey"] for e in get(api, "/api/v2/entitlements", orderBy="createdAt", order="DESC")["items"]]
    assert keys == ["acme", "globex"]
    assert [e["customerKey"] for e in get(api, "/api/v1/entitlements", order="DESC")] == ["acme", "globex"]
    assert [f["key"] for f in get(api, "/api/v1/features")] == ["calls", "sso"]
    assert [f["key"] for f in get(api, "/api/v1/features", orderBy="name", order="DESC")] == ["sso", "calls"]
    page = get(api, "/api/v1/features", page=2, pageSize=1)
    assert (page["totalCount"], [f["key"] for f in page["items"]]) == (2, ["sso"])


def test_event_items_carry_the_customer_of_their_subject(setup: Api) -> None:
    api = setup
    acme = get(api, "/api/v1/customers/acme")["id"]
    # a customer claiming a subject that differs from its key
    r = post(api, "/api/v1/customers", {"key": "initech", "usageAttribution": {"subjectKeys": ["ini-1"]}})
    assert r.status_code == 201, r.text
    initech = r.json()["id"]
    events = [
        {"specversion": "1.0", "id": f"x{i}", "source": "app", "type": "call", "subject": s, "data": {"n": 1}}
        for i, s in enumerate(("ini-1", "nobody"))
    ]
    assert api.post_events(events).status_code == 204
    by_id = {item["event"]["id"]: item for item in get(api, "/api/v2/events")["items"]}
    assert by_id["e0"]["customerId"] == acme and by_id["x0"]["customerId"] == initech
    assert "customerId" not in by_id["x1"]  # a subject no customer has: none, as OpenMeter
    v1 = {item["event"]["id"]: item for item in get(api, "/api/v1/events")}
    assert v1["e0"]["customerId"] == acme and v1["x0"]["customerId"] == initech and "customerId" not in v1["x1"]
    mine = get(api, "/api/v1/events", customerId=[initech, acme])
    assert [i["event"]["id"] for i in mine] == ["x0", *[f"e{i}" for i in range(6, -1, -1)]]
    assert [i["event"]["id"] for i in get(api, "/api/v1/events", customerId=acme, subject="nobody")] == []


def test_entitlement_history_answers_any_range_exactly(setup: Api) -> None:
    api = setup
    body = {"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "MONTH"}, "issue": {"amount": 100},
            "measureUsageFrom": "CURRENT_PERIOD_START"}  # fmt: skip
    r = post(api, "/api/v2/customers/acme/entitlements", body)
    assert r.status_code == 201, r.text
    ent = r.json()["id"]
    minute = T0_US - 3 * 60_000_000  # acme's events e0..e6 are at T0-10 min .. T0-4 min, 2 each
    extra = [
        {"specversion": "1.0", "id": f"p{i}", "source": "app", "type": "call", "subject": "acme", "time": t, "data": d}
        for i, (t, d) in enumerate(
            (
                (rfc3339(minute + 15_500_000), {"n": 5}),
                (rfc3339(minute + 45_000_000), {"n": 7}),
                (rfc3339(minute + 59_999_000), {"n": 11}),
            )
        )
    ]
    assert api.post_events(extra).status_code == 204

    def history(path: str, start: int, end: int, size: str = "MINUTE", **more: str) -> Any:
        return get(api, path, **{"from": rfc3339(start), "to": rfc3339(end), "windowSize": size, **more})

    for path in (
        f"/api/v2/customers/acme/entitlements/{ent}/history",
        "/api/v2/customers/acme/entitlements/calls/history",
        f"/api/v1/subjects/acme/entitlements/{ent}/history",
    ):
        # inside one minute: [minute+10 s, minute+30.25 s) holds the 5 only
        found = history(path, minute + 10_000_000, minute + 30_250_000)
        assert [(w["period"]["from"], w["period"]["to"], w["usage"]) for w in found["windowedHistory"]] == [
            (rfc3339(minute + 10_000_000), rfc3339(minute + 30_250_000), 5)
        ]
        # across minutes, with milliseconds: e0 (at T0-10 min) falls out by 1 ms, the 11 in by 1 ms
        found = history(path, T0_US - 10 * 60_000_000 + 1_000, minute + 59_999_001, "HOUR")
        assert sum(w["usage"] for w in found["windowedHistory"]) == 6 * 2 + 5 + 7 + 11
        assert found["windowedHistory"][0]["period"]["from"] == rfc3339(T0_US - 10 * 60_000_000 + 1_000)
        # the burndown starts at `from` with the balance then: e0's 2 (1 ms before) already burnt
        assert found["burndownHistory"][0]["usage"] == 35 and found["burndownHistory"][0]["balanceAtEnd"] == 63
        # the same range as the meter query answers it
        query = get(
            api,
            "/api/v1/meters/calls/query",
            **{"from": rfc3339(T0_US - 10 * 60_000_000 + 1_000), "to": rfc3339(minute + 59_999_001), "subject": "acme"},
        )
        assert [row["value"] for row in query["data"]] == [35]
        # a time zone with a half-hour offset, days
        found = history(path, minute + 45_000_000, minute + 59_999_000, "DAY", windowTimeZone="Asia/Kolkata")
        assert [w["usage"] for w in found["windowedHistory"]] == [7]
    r = api.client.get(
        f"/api/v2/customers/acme/entitlements/{ent}/history",
        params={"from": rfc3339(minute + 5), "to": rfc3339(minute + 5), "windowSize": "HOUR"},
        headers=api.headers(),
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_range", r.text


@pytest.fixture(params=MODES)
def either(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    yield from mode_api(request, tmp_path)


def test_v2_events_pages_through_every_event_once_in_both_modes(either: Api) -> None:
    """Scale mode has no single ledger sequence: its cursor is the last event's place in the raw
    table (receipt time, log position), and paging reaches every event exactly once."""
    api = either
    sent = [
        {"specversion": "1.0", "id": f"p{i:02}", "source": "pager", "type": "call", "subject": f"s{i % 4}",
         "time": rfc3339(T0_US - i * 1_000_000), "data": {"n": i}}
        for i in range(30)
    ]  # fmt: skip
    r = api.client.post(
        "/api/v1/events", json=sent, headers=api.headers(**{"Content-Type": "application/cloudevents-batch+json"})
    )
    assert r.status_code == 204, r.text
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor is not None:
            params["cursor"] = cursor
        page = get(api, "/api/v2/events", **params)
        seen += [item["event"]["id"] for item in page["items"]]
        pages += 1
        cursor = page.get("nextCursor")
        if cursor is None:
            break
    assert sorted(seen) == sorted(e["id"] for e in sent) and len(seen) == 30 and pages >= 5
    for bad in ("not~a~cursor", "1~x~t:0", "é"):
        r = api.client.get("/api/v2/events", params={"cursor": bad}, headers=api.headers())
        assert r.status_code == 400 and r.json()["code"] == "invalid_cursor", (bad, r.text)
