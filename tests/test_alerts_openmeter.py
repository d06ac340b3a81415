"""Balance-threshold rules decide as OpenMeter's notification consumer does
(``openmeter/notification/consumer/entitlementbalancethreshold.go``), on the value
``GET .../value`` answers (the credit engine's balance snapshot), in the in-process app on a
real SQLite file:

- a percentage is of ``totalAvailableGrantAmount`` (what the grants covered in the period plus
  the balance: an expired grant's share stays in it), a balance threshold is on the balance;
- usage must be strictly above a level; of the thresholds reached, only the highest usage one
  (and the lowest balance one) fires;
- a threshold fires again in the same period once another one of its kind fired after it: a
  grant that lowers the percentage used fires the lower threshold at once (OpenMeter evaluates
  on grant changes too), and the higher one fires again when usage reaches it;
- the payload carries the snapshot (usage, balance, overage, totalAvailableGrantAmount) that
  the API answered then.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Api, build_api
from test_entitlements_api import ev, setup, value

DAY_US = 86_400_000_000


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path)


def add_rule(api: Api, *thresholds: tuple[str, Any]) -> str:
    ch = api.client.post("/api/v1/notification/channels", json={"type": "LOG", "name": "log"}, headers=api.headers())
    assert ch.status_code == 201, ch.text
    body = {
        "type": "entitlements.balance.threshold",
        "name": "usage",
        "channels": [ch.json()["id"]],
        "thresholds": [{"type": t, "value": v} for t, v in thresholds],
    }
    r = api.client.post("/api/v1/notification/rules", json=body, headers=api.headers())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def fired(api: Api) -> list[dict[str, Any]]:
    """The payloads' data of every fired event, oldest first (after the aggregator caught up)."""
    value(api)  # waits for the aggregator: alerts commit with the usage that fired them
    r = api.client.get("/api/v1/notification/events", headers=api.headers())
    assert r.status_code == 200, r.text
    items = sorted(r.json()["items"], key=lambda e: (e["createdAt"], e["id"]))
    return [msgspec.json.decode(msgspec.json.encode(e["payload"]))["data"] for e in items]


def thresholds(data: list[dict[str, Any]]) -> list[str]:
    return [f"{d['threshold']['type']}:{d['threshold']['value']}" for d in data]


def snapshot(v: dict[str, Any]) -> dict[str, Any]:
    return {k: v[k] for k in ("hasAccess", "usage", "balance", "overage", "totalAvailableGrantAmount")}


def grant(api: Api, amount: int, expiration: dict[str, Any], priority: int) -> None:
    body = {"amount": amount, "effectiveAt": "2026-03-01T12:00:00Z", "expiration": expiration, "priority": priority}
    r = api.client.post("/api/v1/subjects/acme/entitlements/tokens/grants", json=body, headers=api.headers())
    assert r.status_code == 201, r.text


def test_only_the_highest_threshold_past_fires_and_fires_again_after_a_grant(api: Api) -> None:
    setup(api)  # 100 a month (issueAfterReset), March 2026
    add_rule(api, ("PERCENT", 50), ("PERCENT", 80))
    api.post_events([ev("e1", tokens=50)])
    assert fired(api) == []  # 50 of 100 is not above 50 %
    api.post_events([ev("e2", tokens=35)])  # 85: past 50 % and 80 %
    (first,) = fired(api)
    assert thresholds([first]) == ["PERCENT:80"]
    assert (
        snapshot(first["value"])
        == snapshot(value(api))
        == {
            "hasAccess": True,
            "usage": 85,
            "balance": 15,
            "overage": 0,
            "totalAvailableGrantAmount": 100,
        }
    )

    grant(api, 20, {"duration": "DAY", "count": 30}, 1)  # 85 of 120: 50 % is the highest past now
    after_grant = fired(api)
    assert thresholds(after_grant) == ["PERCENT:80", "PERCENT:50"]
    assert snapshot(after_grant[1]["value"]) == snapshot(value(api))
    assert after_grant[1]["value"]["totalAvailableGrantAmount"] == 120

    api.clock.advance(60)
    api.post_events([ev("e3", time="2026-03-01T12:01:00Z", tokens=12)])  # 97 of 120: past 96, 80 % again
    again = fired(api)
    assert thresholds(again) == ["PERCENT:80", "PERCENT:50", "PERCENT:80"]
    assert snapshot(again[2]["value"]) == snapshot(value(api))
    assert again[2]["value"]["usage"] == 97
    api.post_events([ev("e4", time="2026-03-01T12:01:00Z", tokens=1)])
    assert len(fired(api)) == 3  # 98: still 80 %, which fired last

    events = api.client.get("/api/v1/notification/events", headers=api.headers()).json()["items"]
    assert sorted(e["threshold"] for e in events) == ["PERCENT:50", "PERCENT:80", "PERCENT:80"]


def test_percent_of_the_total_available_and_balance_thresholds_with_an_expired_grant(api: Api) -> None:
    setup(api)  # issueAfterReset 100 (priority 1)
    add_rule(api, ("PERCENT", 50), ("PERCENT", 80), ("balance_value", 75))
    grant(api, 100, {"duration": "DAY", "count": 1}, 0)  # burnt first; expires on March 2, 12:00
    api.post_events([ev("e1", tokens=60)])  # the grant covers 60: balance 140 of 200
    assert fired(api) == []
    api.clock.advance(2 * DAY_US // 1_000_000)  # March 3: the grant expired with 40 left
    api.post_events([ev("e2", time="2026-03-03T12:00:00Z", tokens=30)])
    now = value(api)
    assert snapshot(now) == {
        "hasAccess": True,
        "usage": 90,
        "balance": 70,
        "overage": 0,
        "totalAvailableGrantAmount": 160,  # 60 + 30 covered, 70 left
    }
    data = fired(api)
    # 90 is above 50 % of 160 (80), below 80 % (128); the balance 70 is below 75
    assert thresholds(data) == ["PERCENT:50", "balance_value:75"]
    for d in data:
        assert snapshot(d["value"]) == snapshot(now)
        assert d["entitlement"]["currentUsagePeriod"] == {
            "from": "2026-03-01T00:00:00.000Z",
            "to": "2026-04-01T00:00:00.000Z",
        }
        assert (d["feature"]["key"], d["subject"]["key"], d["customer"]["key"]) == ("tokens", "acme", "acme")
    api.post_events([ev("e3", time="2026-03-03T12:00:00Z", tokens=40)])  # 130: 80 % (128); balance 30: still 75
    assert thresholds(fired(api)) == ["PERCENT:50", "balance_value:75", "PERCENT:80"]


def test_no_threshold_fires_without_grants(api: Api) -> None:
    setup(api, limit=None)  # no issueAfterReset, no grant: totalAvailableGrantAmount 0
    add_rule(api, ("NUMBER", 10), ("balance_value", 0))
    api.post_events([ev("e1", tokens=50)])
    assert value(api)["totalAvailableGrantAmount"] == 0
    assert fired(api) == []  # as OpenMeter: nothing to measure against, not even a NUMBER


@pytest.mark.parametrize("kind", ["entitlements.reset", "invoice.created", "invoice.updated"])
def test_openmeter_rule_types_not_built_answer_not_supported(api: Api, kind: str) -> None:
    """OpenMeter's other rule types are a clear 501 naming the type, on create and on update,
    not a 400 that reads as a mistyped request."""
    rule = add_rule(api, ("PERCENT", 50))
    channel = api.client.get(f"/api/v1/notification/rules/{rule}", headers=api.headers()).json()["channels"][0]["id"]
    body = {"type": kind, "name": "other", "channels": [channel]}
    for r in (
        api.client.post("/api/v1/notification/rules", json=body, headers=api.headers()),
        api.client.put(f"/api/v1/notification/rules/{rule}", json=body, headers=api.headers()),
    ):
        assert r.status_code == 501, r.text
        problem = r.json()
        assert (problem["code"], problem["ruleType"]) == ("not_supported", kind)
        assert kind in problem["detail"] and "entitlements.balance.threshold" in problem["detail"]
        assert r.headers["content-type"].startswith("application/problem+json")
    assert api.client.get(f"/api/v1/notification/rules/{rule}", headers=api.headers()).json()["type"] == (
        "entitlements.balance.threshold"
    )
    typo = api.client.post(
        "/api/v1/notification/rules", json={**body, "type": "entitlement.rest"}, headers=api.headers()
    )
    assert typo.status_code == 400 and typo.json()["code"] == "invalid_rule"


def test_events_of_a_deleted_rule_stay_listed(api: Api) -> None:
    """Deleting a rule keeps the events it fired readable (the list answered 404 for all)."""
    rule = add_rule(api, ("PERCENT", 50))
    fired_event = api.client.post(f"/api/v1/notification/rules/{rule}/test", headers=api.headers())
    assert fired_event.status_code == 201, fired_event.text
    assert api.client.delete(f"/api/v1/notification/rules/{rule}", headers=api.headers()).status_code == 204
    listed = api.client.get("/api/v1/notification/events", headers=api.headers())
    assert listed.status_code == 200, listed.text
    assert [(e["id"], e["rule"]["id"]) for e in listed.json()["items"]] == [(fired_event.json()["id"], rule)]
    one = api.client.get(f"/api/v1/notification/events/{fired_event.json()['id']}", headers=api.headers())
    assert one.status_code == 200 and one.json()["rule"]["name"] == "usage", one.text
    payload = one.json()["payload"]["data"]
    assert (payload["kind"], payload["value"]["usage"], payload["entitlement"]["type"]) == ("test", 50, "metered")
