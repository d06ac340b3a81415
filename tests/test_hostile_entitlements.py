"""Entitlement bodies whose values are well-formed JSON but hostile inside: a static entitlement's
``config`` is a JSON document carried in a string, so its nesting is only seen when it is decoded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, start_server

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(Path(tmp_path_factory.mktemp("hostile-entitlements")) / "data")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=60) as c:
        assert c.post("/api/v1/customers", json={"key": "acme"}).status_code == 201
        assert c.post("/api/v1/features", json={"key": "flags", "name": "Flags"}).status_code == 201
        yield c


@pytest.mark.parametrize("config", ["[" * 5000 + "]" * 5000, '{"a":' * 5000 + "1" + "}" * 5000])
def test_a_static_config_nested_too_deep_is_a_400(client: httpx.Client, config: str) -> None:
    body = {"type": "static", "featureKey": "flags", "config": config}

    r = client.post("/api/v1/subjects/acme/entitlements", json=body)

    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "invalid_entitlement"
    assert client.get("/api/v1/subjects/acme/entitlements").json() == []


def test_a_static_config_of_ordinary_depth_is_kept(client: httpx.Client) -> None:
    body = {"type": "static", "featureKey": "flags", "config": '{"a": [1, {"b": 2}]}'}

    r = client.post("/api/v1/subjects/acme/entitlements", json=body)

    assert r.status_code == 201, r.text
    assert client.delete(f"/api/v1/subjects/acme/entitlements/{r.json()['id']}").status_code == 204


@pytest.mark.parametrize(
    ("interval", "anchor"),
    [("MONTH", "9999-12-31T23:59:59Z"), ("P1D", "0001-01-01T00:00:00Z"), ("YEAR", "9999-06-01T00:00:00-14:00")],
)
def test_an_anchor_whose_periods_leave_the_calendar_is_refused_and_nothing_of_it_remains(
    tmp_path: Path, interval: str, anchor: str
) -> None:
    """Such an entitlement used to be committed, then answered 503 "nothing was recorded" when its
    counter could not be built; every later write failed the same way and the server no longer
    started."""
    s = start_server(tmp_path / "data")
    try:
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}, timeout=60) as c:
            meter = {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}
            assert c.post("/api/v1/meters", json=meter).status_code == 201
            assert c.post("/api/v1/customers", json={"key": "acme", "timezone": "Europe/Berlin"}).status_code == 201
            assert c.post("/api/v1/features", json={"key": "f", "name": "F", "meterSlug": "tokens"}).status_code == 201
            body = {
                "type": "metered",
                "featureKey": "f",
                "issueAfterReset": 10,
                "usagePeriod": {"interval": interval, "anchor": anchor},
            }

            r = c.post("/api/v1/subjects/acme/entitlements", json=body)

            assert r.status_code == 400, r.text
            assert r.json()["code"] == "invalid_entitlement"
            assert c.get("/api/v1/subjects/acme/entitlements").json() == []
            assert c.post("/api/v1/features", json={"key": "g", "name": "G"}).status_code == 201
        s.stop()
        s = start_server(tmp_path / "data")
        assert httpx.get(f"{s.url}/api/v1/features/g", headers={"Authorization": f"Bearer {s.key}"}).status_code == 200
    finally:
        s.stop()
