"""Usage periods across resets, as OpenMeter keeps them: every reset is kept with the anchor it
set (OpenMeter's usage-reset table, ``grant_owner_adapter.go`` ``EndCurrentUsagePeriod``), so
the burndown history and values at past times cut the periods before the last reset at the
earlier resets and by the anchors in force then, in each storage mode."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODES, Api, mode_api

HOUR = 3600


@pytest.fixture(params=MODES)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    yield from mode_api(request, tmp_path)


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def ev(id_: str, time: str, n: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": id_, "source": "t", "type": "call", "subject": "acme", "time": time,
            "data": {"n": n}}  # fmt: skip


def test_history_before_the_last_reset_keeps_earlier_resets_and_their_anchors(api: Api) -> None:
    h = api.headers()
    c = api.client
    assert api.create_meter(slug="calls", eventType="call", aggregation="SUM", valueProperty="$.n").status_code == 201
    ok(c.post("/api/v1/features", json={"key": "calls", "name": "Calls", "meterSlug": "calls"}, headers=h), 201)
    ok(c.post("/api/v1/customers", json={"key": "acme", "name": "Acme"}, headers=h), 201)
    body = {
        "type": "metered",
        "featureKey": "calls",
        "issueAfterReset": 100,
        "usagePeriod": {"interval": "DAY", "anchor": "2026-03-01T00:00:00Z"},
        "measureUsageFrom": "CURRENT_PERIOD_START",
    }
    ok(c.post("/api/v1/subjects/acme/entitlements", json=body, headers=h), 201)
    base = "/api/v1/subjects/acme/entitlements/calls"
    assert api.post_events([ev("a", "2026-03-01T01:00:00Z", 10)]).status_code == 204
    ok(c.post(f"{base}/reset", json={}, headers=h), 204)  # March 1, 12:00: the anchor moves to 12:00
    api.clock.advance(18 * HOUR)  # March 2, 06:00
    assert api.post_events([ev("b", "2026-03-02T05:00:00Z", 20)]).status_code == 204
    ok(c.post(f"{base}/reset", json={}, headers=h), 204)  # March 2, 06:00: the anchor moves to 06:00
    api.clock.advance(2 * HOUR)
    assert api.post_events([ev("c", "2026-03-02T07:00:00Z", 5)]).status_code == 204

    params = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T08:00:00Z", "windowSize": "HOUR"}
    history = ok(c.get(f"{base}/history", params=params, headers=h))
    segments = [
        (s["period"]["from"], s["period"]["to"], s["usage"], s["balanceAtStart"], s["balanceAtEnd"])
        for s in history["burndownHistory"]
        if s["period"]["from"] != s["period"]["to"]
    ]
    assert segments == [
        ("2026-03-01T00:00:00.000Z", "2026-03-01T12:00:00.000Z", 10, 100, 90),  # ended by the first reset
        ("2026-03-01T12:00:00.000Z", "2026-03-02T06:00:00.000Z", 20, 100, 80),  # from the anchor it set
        ("2026-03-02T06:00:00.000Z", "2026-03-02T08:00:00.000Z", 5, 100, 95),
    ]
    assert sum(w["usage"] for w in history["windowedHistory"]) == 35

    then = ok(c.get(f"{base}/value", params={"time": "2026-03-01T18:00:00Z"}, headers=h))
    assert then["period"] == {"from": "2026-03-01T12:00:00.000Z", "to": "2026-03-02T06:00:00.000Z"}
    assert (then["usage"], then["balance"]) == (0, 100)
    first = ok(c.get(f"{base}/value", params={"time": "2026-03-01T11:00:00Z"}, headers=h))
    assert first["period"] == {"from": "2026-03-01T00:00:00.000Z", "to": "2026-03-01T12:00:00.000Z"}
    assert (first["usage"], first["balance"]) == (10, 90)
    now = ok(c.get(f"{base}/value", headers=h))
    assert (now["usage"], now["balance"]) == (5, 95)
