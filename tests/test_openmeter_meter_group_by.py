"""OpenMeter's meter update with a new ``groupBy`` against a real server of each storage mode:
the meter is derived again from the ledger (scale mode: under a new internal key, from the raw
events, by the backfill a new meter gets), so queries by a new key are exact for the events sent before
the change, entitlements keep their usage, and a key that features filter on cannot be dropped
(409 naming them, as OpenMeter answers) nor redefined."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODES, Server, mode_server


@pytest.fixture(params=MODES)
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """An embedded server of its own, or the shared scale-mode API node (a namespace of its own)."""
    yield from mode_server(request, tmp_path)


@pytest.fixture
def http(served: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {served.key}"}, timeout=60) as c:
        yield c


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def by(http: httpx.Client, key: str, **params: Any) -> dict[str | None, Any]:
    frm = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    rows = ok(http.get("/api/v1/meters/tokens/query", params={"groupBy": key, "from": frm, **params}))["data"]
    return {row["groupBy"][key]: row["value"] for row in rows}


def test_a_group_by_change_is_exact_for_earlier_events(http: httpx.Client) -> None:
    meter = {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.n",
             "groupBy": {"model": "$.model"}}  # fmt: skip
    ok(http.post("/api/v1/meters", json=meter), 201)
    ok(http.post("/api/v1/features", json={"key": "gpt", "name": "GPT", "meterSlug": "tokens",
                                            "meterGroupByFilters": {"model": "gpt"}}), 201)  # fmt: skip
    ok(http.post("/api/v1/customers", json={"key": "acme", "name": "ACME"}), 201)
    ent = {"type": "metered", "featureKey": "gpt", "usagePeriod": {"interval": "DAY"}, "issue": {"amount": 100}}
    ok(http.post("/api/v2/customers/acme/entitlements", json=ent), 201)
    now = datetime.now(UTC).isoformat()
    data = [("gpt", "eu", "1.5"), ("gpt", "us", 2), ("llama", "eu", 4), ("gpt", "eu", "0.25"), ("llama", "us", 8)]
    events = [
        {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "app", "type": "prompt", "subject": "acme",
         "time": now, "data": {"n": n, "model": model, "region": region}}
        for model, region, n in data
    ]  # fmt: skip
    r = http.post("/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"})
    assert r.status_code == 204, r.text
    assert by(http, "model") == {"gpt": 3.75, "llama": 12}
    assert ok(http.get("/api/v2/customers/acme/entitlements/gpt/value"))["usage"] == 3.75

    # a new key: the events already recorded count by it, the first read after the change included
    regions = {"model": "$.model", "region": "$.region"}
    updated = ok(http.put("/api/v1/meters/tokens", json={"name": "Tokens", "groupBy": regions}))
    assert updated["groupBy"] == {"model": "$.model", "region": "$.region"}
    assert by(http, "region") == {"eu": 5.75, "us": 10}
    assert by(http, "region", filterGroupBy='{"model": "gpt"}') == {"eu": 1.75, "us": 2}
    assert sorted(ok(http.get("/api/v1/meters/tokens/group-by/region/values"))) == ["eu", "us"]
    assert ok(http.get("/api/v2/customers/acme/entitlements/gpt/value"))["usage"] == 3.75
    one = {**events[0], "id": "after-the-change", "data": {"n": 1, "model": "gpt", "region": "ap"}}
    r = http.post("/api/v1/events", json=one)
    assert r.status_code == 204, r.text
    assert by(http, "region") == {"eu": 5.75, "us": 10, "ap": 1}
    assert ok(http.get("/api/v2/customers/acme/entitlements/gpt/value"))["usage"] == 4.75

    # the feature filters on model: dropping it or giving it another path is refused, nothing changes
    for group_by in ({"region": "$.region"}, {"model": "$.m", "region": "$.region"}):
        r = http.put("/api/v1/meters/tokens", json={"groupBy": group_by})
        assert r.status_code == 409 and r.json()["code"] == "meter_group_by_in_use", r.text
        assert (r.json()["features"], r.json()["groupBy"]) == (["gpt"], ["model"])
    assert ok(http.get("/api/v1/meters/tokens"))["groupBy"] == {"model": "$.model", "region": "$.region"}

    # once the feature is archived the key can go; the meter answers by what remains
    ok(http.delete("/api/v1/features/gpt"), 204)
    ok(http.put("/api/v1/meters/tokens", json={"groupBy": {"region": "$.region"}}))
    assert by(http, "region") == {"eu": 5.75, "us": 10, "ap": 1}
    r = http.get("/api/v1/meters/tokens/query", params={"groupBy": "model"})
    assert r.status_code == 400, r.text
