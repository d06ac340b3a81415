"""OpenMeter's ``measureUsageFrom`` and ``preserveOverageAtReset`` through a real server in each
storage mode, with hourly usage periods laid out in the past so that every number is computed
by hand: usage 7, 4 and 6.5 in three consecutive periods against an allowance of 5 each."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from mode_http import http_fixture, ok, server_fixture  # noqa: F401  (fixtures: http, server)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def value(http: httpx.Client, customer: str, **params: Any) -> tuple[Any, ...]:
    v = ok(http.get(f"/api/v1/subjects/{customer}/entitlements/tokens/value", params=params))
    return v["hasAccess"], v["usage"], v["balance"], v["overage"]


def test_measure_usage_from_and_overage_preserved_across_resets(http: httpx.Client) -> None:
    now = datetime.now(UTC)
    if now.second > 50:  # keep the whole test inside one minute's reset boundary
        time.sleep(61 - now.second)
        now = datetime.now(UTC)
    a = now.replace(second=0, microsecond=0) - timedelta(minutes=150)  # hourly periods from here; now is in the 3rd
    ok(http.post("/api/v1/meters", json={"slug": "tokens", "eventType": "prompt", "aggregation": "SUM",
                                          "valueProperty": "$.n"}), 201)  # fmt: skip
    ok(http.post("/api/v1/features", json={"key": "tokens", "name": "Tokens", "meterSlug": "tokens"}), 201)
    plans = {
        "keep": {"preserveOverageAtReset": True, "measureUsageFrom": iso(a)},
        "drop": {"measureUsageFrom": iso(a)},
        "now": {"measureUsageFrom": "NOW"},
        "default": {},  # OpenMeter's default: measured from the creation time (to the minute)
        "cps": {"measureUsageFrom": "CURRENT_PERIOD_START"},
        "mid": {"preserveOverageAtReset": True, "measureUsageFrom": iso(a + timedelta(minutes=30))},
    }
    events = []
    for customer, extra in plans.items():
        ok(http.post("/api/v1/customers", json={"key": customer}), 201)
        for minutes, n in ((5, 7), (65, 4), (121, "6.5")):
            at = iso(a + timedelta(minutes=minutes))
            events.append({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "t", "type": "prompt",
                           "subject": customer, "time": at, "data": {"n": n}})  # fmt: skip
        body = {"type": "metered", "featureKey": "tokens", "issueAfterReset": 5,
                "usagePeriod": {"interval": "PT1H", "anchor": iso(a)}, **extra}  # fmt: skip
        ent = ok(http.post(f"/api/v1/subjects/{customer}/entitlements", json=body), 201)
        assert ent["preserveOverageAtReset"] is bool(extra.get("preserveOverageAtReset"))
    r = http.post("/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"})
    assert r.status_code == 204, r.text

    # periods [a, a+1h) 7, [a+1h, a+2h) 4, [a+2h, a+3h) 6.5; allowance 5 each
    assert value(http, "keep") == (False, 6.5, 0, 2.5)  # carried 2, then 1 (2 + 4 - 5); 1 + 6.5 - 5
    assert value(http, "drop") == (False, 6.5, 0, 1.5)
    assert value(http, "now") == (True, 0, 5, 0)  # measured from now: the earlier events do not count
    assert value(http, "default") == (True, 0, 5, 0)  # as NOW
    assert value(http, "cps") == (False, 6.5, 0, 1.5)  # from the current period's start
    assert value(http, "mid") == (False, 6.5, 0, 1.5)  # from a+30m: the 7 at a+5m never counted, nothing carried
    assert value(http, "keep", time=iso(a + timedelta(minutes=70))) == (False, 4, 0, 1)  # 2 carried + 4 - 5
    assert value(http, "keep", time=iso(a + timedelta(minutes=30))) == (False, 7, 0, 2)
    created = now.replace(second=0, microsecond=0)
    starts = (("keep", a), ("mid", a + timedelta(minutes=30)), ("cps", a + timedelta(hours=2)), ("default", created))
    for customer, start in starts:
        ent = ok(http.get(f"/api/v1/subjects/{customer}/entitlements/tokens"))
        assert datetime.fromisoformat(ent["measureUsageFrom"].replace("Z", "+00:00")) == start

    # resets: the overage before the reset carries into the new period when preserved
    ok(http.post("/api/v1/subjects/keep/entitlements/tokens/reset", json={}), 204)  # the entitlement's default
    ok(http.post("/api/v1/subjects/drop/entitlements/tokens/reset", json={"preserveOverage": True}), 204)
    ok(http.post("/api/v1/subjects/cps/entitlements/tokens/reset", json={"preserveOverage": False}), 204)
    assert value(http, "keep") == (True, 0, 2.5, 0)  # 5 - 2.5 carried
    assert value(http, "drop") == (True, 0, 3.5, 0)  # 5 - 1.5 carried
    assert value(http, "cps") == (True, 0, 5, 0)
    later = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "t", "type": "prompt", "subject": "keep",
             "time": iso(datetime.now(UTC)), "data": {"n": 3}}  # fmt: skip
    assert http.post("/api/v1/events", json=later).status_code == 204
    assert value(http, "keep") == (False, 3, 0, 0.5)  # 2.5 carried + 3 used of 5

    ok(http.post("/api/v1/customers", json={"key": "other"}), 201)
    for bad in ("LATER", iso(now + timedelta(hours=1)), 7):
        body = {"type": "metered", "featureKey": "tokens", "usagePeriod": {"interval": "DAY"}, "measureUsageFrom": bad}
        r = http.post("/api/v1/subjects/other/entitlements", json=body)
        assert r.status_code == 400 and r.json()["code"] == "invalid_entitlement", r.text
