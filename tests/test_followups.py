"""A committed write is answered as done, whatever the in-memory work after its COMMIT does.

Feature, entitlement and customer writes commit and then rebuild the live counters' index;
channel and rule writes commit and then reload the alert rules. Here that second step fails for
real: a stored grant row the index cannot read (as an older or damaged data file holds) is
written into the SQLite file beside the running app. The writes are still answered 201/200/204
(they were 500 before, "nothing recorded" for a stored write); the failure is logged and counted
in /metrics; reads that need the stale index answer 503 until it can be rebuilt, /readyz says
not ready (METER-004), and once the damaged row is gone, the next read rebuilds the index and
everything is answered again, the writes made meanwhile included.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from conftest import Api, build_api

from meterline.adapters.sqlite.database import DB_FILE

BAD_ID = "01BADBADBADBADBADBADBADBAD"


@pytest.fixture
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from build_api(tmp_path_factory.mktemp("followups"))


def post(api: Api, path: str, body: object, status: int = 201) -> dict[str, object]:
    r = api.client.post(path, json=body, headers=api.headers())
    assert r.status_code == status, (path, r.text)
    return dict(r.json()) if r.content else {}


def damage(api: Api, present: bool) -> None:
    """Add (or remove) a grant row whose spec is not a grant: only rebuilding the index reads it."""
    conn = sqlite3.connect(api.data_dir / DB_FILE, timeout=10)
    with conn:
        if present:
            (ent,) = conn.execute("SELECT id FROM entitlements LIMIT 1").fetchone()
            conn.execute("INSERT INTO grants VALUES (?,?,?,?,0,NULL)", (BAD_ID, "default", ent, b'{"damaged": 1}'))
        else:
            conn.execute("DELETE FROM grants WHERE id = ?", (BAD_ID,))
    conn.close()


def failures(api: Api) -> float:
    text = api.client.get("/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("meterline_followup_failures_total "))
    return float(line.split()[1])


def test_a_write_whose_follow_up_fails_is_answered_as_done(api: Api) -> None:
    post(api, "/api/v1/meters", {"slug": "calls", "eventType": "request", "aggregation": "COUNT"})
    post(api, "/api/v1/customers", {"key": "acme"})
    post(api, "/api/v1/features", {"key": "calls", "name": "Calls", "meterSlug": "calls"})
    ent = {"type": "metered", "featureKey": "calls", "issueAfterReset": 10, "usagePeriod": {"interval": "MONTH"}}
    post(api, "/api/v1/customers/acme/entitlements", ent)
    value = "/api/v1/customers/acme/entitlements/calls/value"
    assert api.client.get(value, headers=api.headers()).json()["hasAccess"] is True
    assert failures(api) == 0

    damage(api, present=True)
    # writes whose follow-up rebuilds the index from the store: committed, so answered as done
    post(api, "/api/v1/features", {"key": "seats", "name": "Seats"})
    r = api.client.put("/api/v1/customers/acme", json={"key": "acme", "name": "Acme"}, headers=api.headers())
    assert r.status_code == 200, r.text
    assert api.client.delete("/api/v1/features/seats", headers=api.headers()).status_code == 204
    post(api, "/api/v1/features", {"key": "storage", "name": "Storage"})
    assert failures(api) >= 4

    # the stale index is not trusted: reads that need it say so, and so does /readyz
    r = api.client.get(value, headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (503, "storage_unavailable"), r.text
    ready = api.client.get("/readyz")
    assert ready.status_code == 503
    assert "METER-004" in ready.text and "live counters" in ready.text

    # everything committed meanwhile is stored
    keys = {f["key"] for f in api.client.get("/api/v1/features", headers=api.headers()).json()}
    assert keys == {"calls", "storage"}
    assert api.client.get("/api/v1/customers/acme", headers=api.headers()).json()["name"] == "Acme"

    damage(api, present=False)
    r = api.client.get(value, headers=api.headers())
    assert r.status_code == 200 and r.json()["hasAccess"] is True, r.text
    assert api.client.get("/readyz").status_code == 200


def test_a_rule_write_whose_alert_reload_fails_is_answered_as_done(api: Api) -> None:
    channel = post(api, "/api/v1/notification/channels", {"type": "LOG", "name": "log"})
    conn = sqlite3.connect(api.data_dir / DB_FILE, timeout=10)
    with conn:  # a stored rule the alert evaluator cannot read
        conn.execute("INSERT INTO notification_rules VALUES (?, 'default', ?, 0, 0, NULL)", (BAD_ID, b"{}"))
    conn.close()
    rule = {
        "type": "entitlements.balance.threshold",
        "name": "r",
        "channels": [channel["id"]],
        "thresholds": [{"value": 50, "type": "PERCENT"}],
    }
    created = post(api, "/api/v1/notification/rules", rule)
    assert created["name"] == "r"
    assert failures(api) >= 1
