"""Customers, quarantine, features, entitlements, live counters and the check API, through the app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODES, T0_US, Api, build_api, mode_api
from test_ingest_api import assert_problem

from meterline.domain.clock import rfc3339

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

T0 = rfc3339(T0_US)  # 2026-03-01T12:00:00.000Z


@pytest.fixture(params=MODES)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app in each storage mode: these tests hold for both."""
    yield from mode_api(request, tmp_path)


def ev(id_: str, subject: str = "acme", time: str = T0, tokens: Any = 1, model: str = "small") -> dict[str, Any]:
    data = {"tokens": tokens, "model": model}
    return {
        "specversion": "1.0",
        "id": id_,
        "source": "s",
        "type": "llm",
        "subject": subject,
        "time": time,
        "data": data,
    }


def setup(api: Api, *, limit: Any = 100, soft: Any = 80, tz: str = "UTC", **extra: Any) -> dict[str, Any]:
    assert (
        api.create_meter(
            slug="tokens", eventType="llm", aggregation="SUM", valueProperty="$.tokens", groupBy={"model": "$.model"}
        ).status_code
        == 201
    )
    c = api.client.post(
        "/api/v1/customers",
        json={"key": "acme", "name": "Acme", "subjectKeys": ["acme", "acme-eu"], "timezone": tz},
        headers=api.headers(),
    )
    assert c.status_code == 201, c.text
    f = api.client.post(
        "/api/v1/features", json={"key": "tokens", "name": "Tokens", "meterSlug": "tokens"}, headers=api.headers()
    )
    assert f.status_code == 201, f.text
    body = {
        "type": "metered",
        "featureKey": "tokens",
        "issueAfterReset": limit,
        "softLimit": soft,
        "usagePeriod": {"interval": "MONTH"},
        "measureUsageFrom": "CURRENT_PERIOD_START",  # the whole month holding now counts
        **extra,
    }
    e = api.client.post("/api/v1/customers/acme/entitlements", json=body, headers=api.headers())
    assert e.status_code == 201, e.text
    return dict(e.json())


def value(api: Api, feature: str = "tokens", customer: str = "acme") -> dict[str, Any]:
    r = api.client.get(f"/api/v1/customers/{customer}/entitlements/{feature}/value", headers=api.headers())
    assert r.status_code == 200, r.text
    return dict(r.json())


def check(api: Api, *features: tuple[str, Any], customer: str = "acme") -> Any:
    body = {"customer": customer, "features": [{"feature": f, "quantity": q} for f, q in features]}
    return api.client.post("/api/v1/entitlements/check", json=body, headers=api.headers())


def test_customer_registry_and_openmeter_subjects(api: Api) -> None:
    r = api.client.post(
        "/api/v1/customers",
        json={"key": "acme", "subjectKeys": ["a1", "a2"], "timezone": "Asia/Kathmandu"},
        headers=api.headers(),
    )
    assert r.status_code == 201 and r.json()["subjectKeys"] == ["a1", "a2"]
    assert_problem(
        api.client.post("/api/v1/customers", json={"key": "acme"}, headers=api.headers()), 409, "customer_exists"
    )
    assert_problem(
        api.client.post("/api/v1/customers", json={"key": "other", "subjectKeys": ["a2"]}, headers=api.headers()),
        409,
        "subject_claimed",
    )
    bad = assert_problem(
        api.client.post("/api/v1/customers", json={"key": "x y", "timezone": "Mars/Base"}, headers=api.headers()),
        400,
        "invalid_customer",
    )
    assert len(bad["problems"]) == 2
    up = api.client.post("/api/v1/subjects", json=[{"key": "bob", "displayName": "Bob"}], headers=api.headers())
    assert up.status_code == 200 and up.json()[0]["displayName"] == "Bob"
    keys = [s["key"] for s in api.client.get("/api/v1/subjects", headers=api.headers()).json()]
    assert keys == ["acme", "bob"]
    put = api.client.put(
        "/api/v1/customers/acme",
        json={"key": "acme", "name": "Acme", "subjectKeys": ["a1", "a3"]},
        headers=api.headers(),
    )
    assert put.status_code == 200 and put.json()["subjectKeys"] == ["a1", "a3"]
    assert api.client.delete("/api/v1/subjects/bob", headers=api.headers()).status_code == 204
    assert_problem(api.client.get("/api/v1/customers/bob", headers=api.headers()), 404, "customer_not_found")


def test_quarantine_keeps_events_and_release_counts_them_exactly_once(api: Api) -> None:
    assert (
        api.create_meter(slug="tokens", eventType="llm", aggregation="SUM", valueProperty="$.tokens").status_code == 201
    )
    assert (
        api.client.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}, headers=api.headers()).status_code
        == 200
    )
    events = [ev(f"q{i}", subject="newco", tokens=i) for i in range(1, 6)] + [ev("k1", subject="newco-2", tokens=100)]
    r = api.post_events(events, Prefer="return=representation")
    assert r.status_code == 200, r.text
    assert {o["status"] for o in r.json()["events"]} == {"quarantined"}
    assert api.query("tokens").json()["data"] == []
    again = api.post_events(events[:2], Prefer="return=representation")
    assert [o["status"] for o in again.json()["events"]] == ["duplicate", "duplicate"]
    listed = api.client.get("/api/v1/quarantine", params={"subject": "newco"}, headers=api.headers()).json()
    assert [i["eventId"] for i in listed["items"]] == ["q1", "q2", "q3", "q4", "q5"]
    c = api.client.post("/api/v1/customers", json={"key": "newco"}, headers=api.headers())
    assert c.status_code == 201 and c.json()["released"] == {"accepted": 5, "rejected": 0}
    assert api.query("tokens").json()["data"][0]["value"] == 15
    retry = api.post_events(events[:5], Prefer="return=representation")
    assert {o["status"] for o in retry.json()["events"]} == {"duplicate"}
    assert api.query("tokens").json()["data"][0]["value"] == 15
    rest = api.client.get("/api/v1/quarantine", headers=api.headers()).json()["items"]
    assert [i["eventId"] for i in rest] == ["k1"]
    # known subjects are accepted directly under the quarantine policy
    assert api.post_events([ev("n1", subject="newco", tokens=5)]).status_code == 204
    assert api.query("tokens").json()["data"][0]["value"] == 20


def test_a_customers_own_key_is_a_known_subject_to_the_unknown_subject_policy(api: Api) -> None:
    """Usage is attributed to a customer's key as to its subject keys (OpenMeter's attribution),
    so the policy treats the key as known, and a new customer releases the events held under
    its key even when its subject keys leave the key out."""
    assert (
        api.create_meter(slug="tokens", eventType="llm", aggregation="SUM", valueProperty="$.tokens").status_code == 201
    )
    api.client.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}, headers=api.headers())
    body = {"key": "acme", "usageAttribution": {"subjectKeys": ["acme-app"]}}
    assert api.client.post("/api/v1/customers", json=body, headers=api.headers()).status_code == 201
    r = api.post_events([ev("k1", subject="acme", tokens=3), ev("n1", subject="newco", tokens=5)],
                        Prefer="return=representation")  # fmt: skip
    assert [o["status"] for o in r.json()["events"]] == ["accepted", "quarantined"]
    body = {"key": "newco", "usageAttribution": {"subjectKeys": ["newco-app"]}}
    c = api.client.post("/api/v1/customers", json=body, headers=api.headers())
    assert c.status_code == 201 and c.json()["released"] == {"accepted": 1, "rejected": 0}
    assert api.query("tokens").json()["data"][0]["value"] == 8
    api.client.put("/api/v1/settings", json={"unknownSubjects": "reject"}, headers=api.headers())
    assert api.post_events([ev("k2", subject="acme", tokens=1)]).status_code == 204
    assert api.client.delete("/api/v1/customers/acme", headers=api.headers()).status_code == 204
    assert_problem(api.post_events([ev("k3", subject="acme", tokens=1)]), 400, "events_rejected")
    assert api.query("tokens").json()["data"][0]["value"] == 9


def test_reject_policy_dead_letters_unknown_subjects(api: Api) -> None:
    api.client.put("/api/v1/settings", json={"unknownSubjects": "reject"}, headers=api.headers())
    r = api.post_events([ev("r1", subject="ghost")])
    assert_problem(r, 400, "events_rejected")
    dead = api.client.get("/api/v1/dead-letters", headers=api.headers()).json()["items"]
    assert dead[0]["reason"] == "unknown_subject" and dead[0]["eventId"] == "r1"
    assert_problem(
        api.client.put("/api/v1/settings", json={"unknownSubjects": "maybe"}, headers=api.headers()),
        400,
        "invalid_settings",
    )


def test_metered_value_and_check_follow_ingest(api: Api) -> None:
    ent = setup(api)
    assert ent["currentUsagePeriod"] == {"from": "2026-03-01T00:00:00.000Z", "to": "2026-04-01T00:00:00.000Z"}
    assert value(api)["usage"] == 0 and value(api)["hasAccess"] is True
    assert api.post_events([ev("e1", tokens=50), ev("e2", subject="acme-eu", tokens="10.5")]).status_code == 204
    v = value(api)
    assert (v["usage"], v["balance"], v["overage"], v["softLimitExceeded"]) == (60.5, 39.5, 0, False)
    assert v["period"] == {"from": "2026-03-01T00:00:00.000Z", "to": "2026-04-01T00:00:00.000Z"}
    # half a day of 31 elapsed: 60.5 * 31 / 0.5
    assert v["projectedUsage"] == 3751
    r = check(api, ("tokens", "39.5"))
    assert r.json()["allowed"] is True
    r = check(api, ("tokens", 40)).json()
    assert r["allowed"] is False and r["features"][0]["denial"] == "limit_exhausted"
    assert r["features"][0]["limit"] == 100 and r["features"][0]["usage"] == 60.5
    api.post_events([ev("e3", tokens=25)])
    v = value(api)
    assert v["softLimitExceeded"] is True and v["usage"] == 85.5
    api.post_events([ev("e4", tokens=20), ev("e4", tokens=20)])  # a retry in the same batch counts once
    v = value(api)
    assert (v["usage"], v["balance"], v["overage"], v["hasAccess"]) == (105.5, 0, 5.5, False)
    assert check(api, ("tokens", 0)).json()["features"][0]["denial"] == "limit_exhausted"


def test_boolean_static_and_missing_entitlements(api: Api) -> None:
    setup(api)
    for key in ("sso", "plan"):
        api.client.post("/api/v1/features", json={"key": key, "name": key}, headers=api.headers())
    assert (
        api.client.post(
            "/api/v1/customers/acme/entitlements", json={"type": "boolean", "featureKey": "sso"}, headers=api.headers()
        ).status_code
        == 201
    )
    r = api.client.post(
        "/api/v1/customers/acme/entitlements",
        json={"type": "static", "featureKey": "plan", "config": '{"seats": 5}'},
        headers=api.headers(),
    )
    assert r.status_code == 201, r.text
    out = check(api, ("sso", 0), ("plan", 0), ("tokens", 1), ("nothing", 0)).json()
    assert out["allowed"] is False
    by = {f["feature"]: f for f in out["features"]}
    assert by["sso"]["allowed"] and by["plan"]["config"] == '{"seats": 5}' and by["tokens"]["allowed"]
    assert by["nothing"]["denial"] == "no_entitlement"
    assert_problem(check(api, ("sso", 0), customer="nobody"), 404, "customer_not_found")
    assert_problem(
        api.client.post(
            "/api/v1/customers/acme/entitlements", json={"type": "boolean", "featureKey": "sso"}, headers=api.headers()
        ),
        409,
        "entitlement_exists",
    )
    bad = api.client.post(
        "/api/v1/customers/acme/entitlements", json={"type": "metered", "featureKey": "sso"}, headers=api.headers()
    )
    assert_problem(bad, 400, "invalid_entitlement")


def test_period_boundaries_in_the_customer_zone_and_late_events(api: Api) -> None:
    # New York: March 2026 starts at 05:00Z (EST); DST begins on the 8th; April starts at 04:00Z (EDT)
    api.clock.advance(-12 * 3600 + 6 * 3600)  # 2026-03-01T06:00Z = 01:00 in New York
    ent = setup(api, tz="America/New_York")
    assert ent["currentUsagePeriod"] == {"from": "2026-03-01T05:00:00.000Z", "to": "2026-04-01T04:00:00.000Z"}
    api.post_events(
        [ev("feb", time="2026-03-01T04:59:00Z", tokens=7), ev("mar", time="2026-03-01T05:00:00Z", tokens=3)]
    )
    assert value(api)["usage"] == 3  # 04:59Z is still February in New York
    api.clock.advance(31 * 86400 - 2 * 3600)  # 2026-04-01T04:00Z: April in New York
    assert value(api)["usage"] == 0
    api.post_events([ev("late-march", time="2026-04-01T03:59:00Z", tokens=50)])
    assert value(api)["usage"] == 0  # a late event for the closed period does not reopen it
    api.post_events([ev("april", time="2026-04-01T04:00:00Z", tokens=2)])
    assert value(api)["usage"] == 2
    past = api.client.get(
        "/api/v1/subjects/acme/entitlements/tokens/value",
        params={"time": "2026-04-01T03:59:00Z"},
        headers=api.headers(),
    ).json()
    assert past["usage"] == 53 and past["period"]["from"] == "2026-03-01T05:00:00.000Z"


def test_month_end_anchor_and_week_interval(api: Api) -> None:
    ent = setup(api, usagePeriod={"interval": "MONTH", "anchor": "2026-01-31T00:00:00Z"})
    assert ent["currentUsagePeriod"] == {"from": "2026-02-28T00:00:00.000Z", "to": "2026-03-31T00:00:00.000Z"}
    api.clock.advance(30 * 86400)  # 2026-03-31T12:00Z
    assert value(api)["period"] == {"from": "2026-03-31T00:00:00.000Z", "to": "2026-04-30T00:00:00.000Z"}


def test_grants_add_to_the_allowance_and_reset_starts_a_new_period(api: Api) -> None:
    setup(api, limit=10, soft=None)
    api.post_events([ev("a", tokens=12)])
    assert value(api)["hasAccess"] is False
    g = api.client.post(
        "/api/v1/subjects/acme/entitlements/tokens/grants",
        json={"amount": 5, "effectiveAt": "2026-03-01T00:00:00Z", "expiration": {"duration": "MONTH", "count": 1}},
        headers=api.headers(),
    )
    assert g.status_code == 201, g.text
    v = value(api)
    assert (v["totalAvailableGrantAmount"], v["balance"], v["hasAccess"]) == (15, 3, True)
    assert api.client.delete(f"/api/v1/grants/{g.json()['id']}", headers=api.headers()).status_code == 204
    assert value(api)["balance"] == 0
    ent_id = api.client.get("/api/v1/customers/acme/entitlements/tokens", headers=api.headers()).json()["id"]
    api.clock.advance(3600)
    r = api.client.post(
        f"/api/v1/subjects/acme/entitlements/{ent_id}/reset", json={"retainAnchor": True}, headers=api.headers()
    )
    assert r.status_code == 204, r.text
    v = value(api)
    assert v["usage"] == 0 and v["period"] == {"from": "2026-03-01T13:00:00.000Z", "to": "2026-04-01T00:00:00.000Z"}
    api.post_events([ev("b", time="2026-03-01T13:00:00Z", tokens=4), ev("c", time="2026-03-01T12:30:00Z", tokens=4)])
    assert value(api)["usage"] == 4
    h = api.client.get(
        f"/api/v1/subjects/acme/entitlements/{ent_id}/history",
        params={"from": "2026-03-01T13:00:00Z", "windowSize": "HOUR"},
        headers=api.headers(),
    )
    assert h.status_code == 200 and h.json()["windowedHistory"][0]["usage"] == 4


def test_counters_survive_a_restart(tmp_path: Path) -> None:
    gen = build_api(tmp_path)
    api = next(gen)
    setup(api)
    api.post_events([ev("e1", tokens=30), ev("e2", tokens=12)])
    gen.close()
    gen = build_api(tmp_path)
    api = next(gen)
    assert value(api)["usage"] == 42
    api.post_events([ev("e1", tokens=30), ev("e3", tokens=1)])
    assert value(api)["usage"] == 43
    gen.close()


def test_daily_periods_in_kathmandu_and_weekly_in_london(api: Api) -> None:
    # Asia/Kathmandu is UTC+05:45: its days start at 18:15Z
    ent = setup(api, tz="Asia/Kathmandu", usagePeriod={"interval": "DAY"})
    assert ent["currentUsagePeriod"] == {"from": "2026-02-28T18:15:00.000Z", "to": "2026-03-01T18:15:00.000Z"}
    api.post_events([ev("k1", time="2026-03-01T11:00:00Z", tokens=4), ev("k0", time="2026-02-28T18:14:00Z", tokens=9)])
    assert value(api)["usage"] == 4
    api.clock.advance(6 * 3600 + 15 * 60)  # 18:15Z: a new Kathmandu day
    assert value(api)["usage"] == 0
    r = api.client.post("/api/v1/customers", json={"key": "uk", "timezone": "Europe/London"}, headers=api.headers())
    assert r.status_code == 201
    w = api.client.post(
        "/api/v1/customers/uk/entitlements",
        headers=api.headers(),
        json={
            "type": "metered",
            "featureKey": "tokens",
            "issueAfterReset": 10,
            "usagePeriod": {"interval": "WEEK", "anchor": "2026-03-23T00:00:00Z"},
        },
    )
    assert w.status_code == 201, w.text
    # London moves to BST on 2026-03-29: the week from Monday 23 March ends at 23:00Z on the 29th
    periods = api.client.get(
        "/api/v1/customers/uk/entitlements/tokens/value", headers=api.headers(), params={"time": "2026-03-25T12:00:00Z"}
    ).json()["period"]
    assert periods == {"from": "2026-03-23T00:00:00.000Z", "to": "2026-03-29T23:00:00.000Z"}
