"""Portal tokens through the app: a token reads its own customer's usage and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MODES, Api, mode_api
from test_entitlements_api import ev, setup
from test_ingest_api import assert_problem


@pytest.fixture(params=MODES)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app in each storage mode: these tests hold for both."""
    yield from mode_api(request, tmp_path)


def portal(api: Api, token: str, meter: str = "tokens", **params: str) -> object:
    return api.client.get(
        f"/api/v1/portal/meters/{meter}/query", params=params, headers={"Authorization": f"Bearer {token}"}
    )


def test_portal_token_scopes_usage_to_its_subject_and_chosen_meters(api: Api) -> None:
    setup(api)
    api.client.post("/api/v1/customers", json={"key": "globex"}, headers=api.headers())
    api.create_meter(slug="calls", eventType="call", aggregation="COUNT")
    api.post_events([ev("a", tokens=5), ev("b", subject="acme-eu", tokens=7), ev("c", subject="globex", tokens=100)])
    r = api.client.post(
        "/api/v1/portal/tokens", json={"subject": "acme", "allowedMeterSlugs": ["tokens"]}, headers=api.headers()
    )
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    q = portal(api, token)
    assert q.status_code == 200, q.text  # type: ignore[attr-defined]
    # as OpenMeter answers: the token's subject alone (not acme-eu, the customer's other subject),
    # split by subject
    rows = q.json()["data"]  # type: ignore[attr-defined]
    assert [(row["subject"], row["value"]) for row in rows] == [("acme", 5)]
    # asking for another subject or grouping by subject does not widen the view
    q = portal(api, token, subject="globex")
    assert [(row["subject"], row["value"]) for row in q.json()["data"]] == [("acme", 5)]  # type: ignore[attr-defined]
    q = portal(api, token, groupBy="subject")
    assert [(row["subject"], row["value"]) for row in q.json()["data"]] == [("acme", 5)]  # type: ignore[attr-defined]
    assert_problem(portal(api, token, filterGroupBy='{"subject": "globex"}'), 400, "invalid_query")
    assert_problem(portal(api, token, meter="calls"), 403, "meter_not_allowed")
    assert_problem(portal(api, "not-a-token"), 401, "portal_token_invalid")
    assert_problem(portal(api, api.key), 401, "portal_token_invalid")  # an API key is not a portal token
    listed = api.client.get("/api/v1/portal/tokens", headers=api.headers()).json()
    assert [t["subject"] for t in listed] == ["acme"]
    assert (
        api.client.post("/api/v1/portal/tokens/invalidate", json={"subject": "acme"}, headers=api.headers()).status_code
        == 204
    )
    assert_problem(portal(api, token), 401, "portal_token_invalid")


def test_portal_tokens_expire_and_need_an_admin_key(api: Api) -> None:
    setup(api)
    r = api.client.post("/api/v1/portal/tokens", json={"subject": "acme", "expiresIn": 60}, headers=api.headers())
    token = r.json()["token"]
    assert portal(api, token).status_code == 200  # type: ignore[attr-defined]
    api.clock.advance(120)
    assert_problem(portal(api, token), 401, "portal_token_invalid")
    too_long = api.client.post(
        "/api/v1/portal/tokens", json={"subject": "acme", "expiresIn": 10**7}, headers=api.headers()
    )
    assert too_long.status_code == 400
    assert_problem(api.client.post("/api/v1/portal/tokens", json={"subject": "acme"}), 401, "missing_api_key")
