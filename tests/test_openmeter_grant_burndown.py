"""OpenMeter's credit engine through a real server in each storage mode: grants burn in priority
order, then earliest expiry; expired and voided balances are lost; overage is paid by later
grants; recurring grants refill; resets roll balances over between min and max and burn a
preserved overage first. The current usage period (6 hours) is laid out so that it began three
hours ago, and every number is computed by hand."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from mode_http import http_fixture, ok, server_fixture  # noqa: F401  (fixtures: http, server)

DAY30 = {"duration": "DAY", "count": 30}
HOUR1 = {"duration": "HOUR", "count": 1}


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def value(http: httpx.Client, customer: str, **params: Any) -> tuple[Any, ...]:
    v = ok(http.get(f"/api/v1/subjects/{customer}/entitlements/tokens/value", params=params))
    return v["hasAccess"], v["usage"], v["balance"], v["overage"]


def grant(http: httpx.Client, customer: str, amount: Any, at: datetime, **extra: Any) -> dict[str, Any]:
    body = {"amount": amount, "effectiveAt": iso(at), "expiration": DAY30, "priority": 1, **extra}
    return ok(http.post(f"/api/v1/subjects/{customer}/entitlements/tokens/grants", json=body), 201)  # type: ignore[no-any-return]


def test_grants_burn_down_as_openmeter_burns_them(http: httpx.Client) -> None:
    now = datetime.now(UTC)
    if now.second > 45:  # keep the test inside one minute
        time.sleep(61 - now.second)
        now = datetime.now(UTC)
    a = now.replace(second=0, microsecond=0) - timedelta(minutes=180)  # the current period is [a, a+6h)
    m = lambda minutes: a + timedelta(minutes=minutes)  # noqa: E731
    ok(http.post("/api/v1/meters", json={"slug": "tokens", "eventType": "prompt", "aggregation": "SUM",
                                          "valueProperty": "$.n"}), 201)  # fmt: skip
    ok(http.post("/api/v1/features", json={"key": "tokens", "name": "Tokens", "meterSlug": "tokens"}), 201)
    usage = {
        "expiry": [(10, 80)],
        "prio": [(10, 40)],
        "void": [(10, 30), (70, 50)],
        "hard": [(10, 25)],
        "soft": [(10, 25)],
        "paid": [(10, 25)],
        "recur": [(10, 8), (70, 8), (130, 15)],
    }
    events = []
    for customer, uses in usage.items():
        ok(http.post("/api/v1/customers", json={"key": customer}), 201)
        body = {"type": "metered", "featureKey": "tokens", "usagePeriod": {"interval": "PT6H", "anchor": iso(a)},
                "measureUsageFrom": iso(a), "isSoftLimit": customer == "soft"}  # fmt: skip
        ok(http.post(f"/api/v1/subjects/{customer}/entitlements", json=body), 201)
        for minutes, n in uses:
            events.append({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "t", "type": "prompt",
                           "subject": customer, "time": iso(m(minutes)), "data": {"n": n}})  # fmt: skip
    # equal priority: the grant expiring first (at a+60m) burns first, and its rest is lost
    grant(http, "expiry", 100, a, expiration=HOUR1)
    grant(http, "expiry", 100, a)
    # a lower priority number burns first, even though the other grant expires earlier
    grant(http, "prio", 50, a, priority=5, expiration=HOUR1)
    grant(http, "prio", 50, a, priority=1)
    voided = grant(http, "void", 100, a, priority=1)
    grant(http, "void", 100, a, priority=2)
    for customer in ("hard", "soft", "paid"):
        grant(http, customer, 10, a)
    grant(http, "paid", 20, m(120))  # pays the overage of 15 first
    grant(http, "recur", 10, a, recurrence={"interval": "PT1H", "anchor": iso(a)})
    ok(http.delete(f"/api/v1/grants/{voided['id']}", params={"at": iso(m(60))}), 204)
    r = http.post("/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"})
    assert r.status_code == 204, r.text

    assert value(http, "expiry") == (True, 80, 100, 0)  # 80 of the first; its 20 expired
    assert value(http, "expiry", time=iso(m(30))) == (True, 80, 120, 0)
    assert value(http, "prio") == (True, 40, 10, 0)  # 40 of the priority-1 grant; the other expired unused
    assert value(http, "prio", time=iso(m(30))) == (True, 40, 60, 0)
    assert value(http, "void") == (True, 80, 50, 0)  # 30 of the first, voided at a+60m; 50 of the second
    assert value(http, "hard") == (False, 25, 0, 15)
    assert value(http, "soft") == (True, 25, 0, 15)  # a soft limit keeps access in overage
    assert value(http, "paid") == (True, 25, 5, 0)
    assert value(http, "paid", time=iso(m(100))) == (False, 25, 0, 15)
    # 10 each hour: 8 used (2 left), 8 used (2 left), 15 used (5 over), refilled at a+3h: 10 - 5
    assert value(http, "recur") == (True, 31, 5, 0)
    assert value(http, "recur", time=iso(m(150))) == (False, 31, 0, 5)

    check = {"customer": "void", "features": [{"feature": "tokens", "quantity": 50}]}
    assert ok(http.post("/api/v1/entitlements/check", json=check))["allowed"] is True
    check["features"][0]["quantity"] = 51  # type: ignore[index]
    assert ok(http.post("/api/v1/entitlements/check", json=check))["allowed"] is False

    history = ok(http.get("/api/v1/subjects/void/entitlements/tokens/history",
                          params={"from": iso(a), "windowSize": "HOUR"}))  # fmt: skip
    first, second = history["burndownHistory"][:2]
    assert first["period"] == {"from": iso(a), "to": iso(m(60))}
    assert (first["usage"], first["balanceAtStart"], first["balanceAtEnd"]) == (30, 200, 170)
    assert first["grantUsages"] == [{"grantId": voided["id"], "usage": 30}]
    assert second["grantBalancesAtStart"][voided["id"]] == 0  # voided: its 70 are lost
    assert (second["balanceAtStart"], second["usage"]) == (100, 50)
    windows = history["windowedHistory"]  # clock hours, the first from `from`
    assert (windows[0]["balanceAtStart"], sum(w["usage"] for w in windows)) == (200, 80)

    # grants cannot start before the current usage period (OpenMeter refuses them too)
    r = http.post("/api/v1/subjects/void/entitlements/tokens/grants",
                  json={"amount": 5, "effectiveAt": iso(a - timedelta(minutes=1)), "expiration": DAY30})  # fmt: skip
    assert r.status_code == 400 and r.json()["code"] == "invalid_grant", r.text


def test_resets_roll_grants_over_and_burn_preserved_overage_first(http: httpx.Client) -> None:
    now = datetime.now(UTC)
    a = now.replace(second=0, microsecond=0) - timedelta(minutes=180)
    m = lambda minutes: a + timedelta(minutes=minutes)  # noqa: E731
    ok(http.post("/api/v1/meters", json={"slug": "tokens", "eventType": "prompt", "aggregation": "SUM",
                                          "valueProperty": "$.n"}), 201)  # fmt: skip
    ok(http.post("/api/v1/features", json={"key": "tokens", "name": "Tokens", "meterSlug": "tokens"}), 201)
    events = []
    plans = (("roll", [(10, 130), (90, 20)], False), ("keep", [(10, 70), (90, 5)], True), ("issue", [(10, 7)], False))
    for customer, uses, preserve in plans:
        ok(http.post("/api/v1/customers", json={"key": customer}), 201)
        body = {"type": "metered", "featureKey": "tokens", "usagePeriod": {"interval": "PT6H", "anchor": iso(a)},
                "measureUsageFrom": iso(a), "preserveOverageAtReset": preserve}  # fmt: skip
        if customer == "issue":
            body["issueAfterReset"] = 10
        ok(http.post(f"/api/v1/subjects/{customer}/entitlements", json=body), 201)
        for minutes, n in uses:
            events.append({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "t", "type": "prompt",
                           "subject": customer, "time": iso(m(minutes)), "data": {"n": n}})  # fmt: skip
    first = grant(http, "roll", 100, a, priority=1, maxRolloverAmount=50, minRolloverAmount=10)
    grant(http, "roll", 100, a, priority=2, maxRolloverAmount=100, minRolloverAmount=95)
    grant(http, "keep", 50, a, maxRolloverAmount=50, minRolloverAmount=50)
    # v2, no expiration: never expires, and rolls its whole balance over (maxRolloverAmount = amount)
    forever = ok(http.post("/api/v2/customers/issue/entitlements/tokens/grants",
                           json={"amount": 5, "effectiveAt": iso(a), "priority": 1}), 201)  # fmt: skip
    assert ("expiresAt" in forever, forever["maxRolloverAmount"]) == (False, 5)
    assert ok(http.post("/api/v2/customers/issue/entitlements/tokens/grants",
                        json={"amount": 1, "effectiveAt": iso(m(300))}), 201)["priority"] == 0  # fmt: skip
    assert (first["maxRolloverAmount"], first["minRolloverAmount"]) == (50, 10)
    r = http.post("/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"})
    assert r.status_code == 204, r.text
    assert value(http, "roll", time=iso(m(30))) == (True, 130, 70, 0)
    assert value(http, "keep", time=iso(m(30))) == (False, 70, 0, 20)

    for customer in ("roll", "keep", "issue"):
        ok(http.post(f"/api/v1/subjects/{customer}/entitlements/tokens/reset", json={"effectiveAt": iso(m(60))}), 204)
    # roll: 0 left -> max(0, 10) = 10; 70 left -> min(100, max(70, 95)) = 95; then 20 used, priority 1 first
    assert value(http, "roll") == (True, 20, 85, 0)
    # keep: 50 after the rollover, less the 20 of overage preserved; then 5 used
    assert value(http, "keep") == (True, 5, 25, 0)
    # issue: neither grant expires, so the one made first (issueAfterReset's) took the 7; at the
    # reset it is back at 10 and the v2 grant keeps its 5
    assert value(http, "issue", time=iso(m(30))) == (True, 7, 8, 0)
    assert value(http, "issue") == (True, 0, 15, 0)
    r = http.post("/api/v1/subjects/keep/entitlements/tokens/reset", json={"effectiveAt": iso(m(30))})
    assert r.status_code == 400 and r.json()["code"] == "invalid_reset", r.text  # before the current period

    # v2: maxRolloverAmount defaults to the amount (v1: 0)
    v2 = ok(http.post("/api/v2/customers/roll/entitlements/tokens/grants",
                      json={"amount": 7, "effectiveAt": iso(m(120))}), 201)  # fmt: skip
    assert (v2["maxRolloverAmount"], v2["minRolloverAmount"]) == (7, 0)
