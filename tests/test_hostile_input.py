"""Bad input never gets a 500: hostile bodies, path segments and query parameters against a
real server process, each answered 4xx problem+json with a stable code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Server, start_server
from test_ingest_api import assert_problem

from meterline.api.app import ROUTES

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

PLAN = {
    "plan": "pro",
    "name": "Pro",
    "currency": "USD",
    "cards": [{"key": "api", "name": "API", "meter": "m", "model": {"model": "per_unit", "unitPrice": "0.01"}}],
}


def event(id_: str, data: str = '{"v": 1}', subject: str = "acme") -> str:
    """One CloudEvent as JSON text (``data`` given as raw JSON, so it may nest at will)."""
    return f'{{"specversion":"1.0","id":"{id_}","source":"hostile","type":"t","subject":"{subject}","data":{data}}}'


def nested(depth: int, leaf: str = '{"v": 1}') -> str:
    return '{"a":' * (depth - 1) + leaf + "}" * (depth - 1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("hostile") / "data")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=60) as c:
        seed(c)
        yield c


def seed(c: httpx.Client) -> None:
    """Something behind every id the sweeps use, so handlers get past their lookups."""
    for path, body in [
        ("/api/v1/meters", {"slug": "m", "eventType": "t", "aggregation": "SUM", "valueProperty": "$.v"}),
        ("/api/v1/customers", {"key": "acme", "name": "Acme", "subjectKeys": ["acme"]}),
        ("/api/v1/features", {"key": "f", "name": "F", "meterSlug": "m"}),
        (
            "/api/v1/customers/acme/entitlements",
            {"type": "metered", "featureKey": "f", "issueAfterReset": 10, "usagePeriod": {"interval": "MONTH"}},
        ),
        ("/api/v1/billing/plans", PLAN),
        ("/api/v1/notification/channels", {"type": "LOG", "name": "log"}),
    ]:
        r = c.post(path, json=body)
        assert r.status_code == 201, (path, r.text)


def problem_or_success(r: httpx.Response) -> None:
    assert r.status_code < 500, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
        assert r.json()["code"]


# -- the cases that answered 500 ---------------------------------------------------------------


def test_an_event_nested_too_deep_is_rejected_and_its_neighbours_recorded(client: httpx.Client) -> None:
    for depth in (65, 1_000, 1_100, 100_000):
        body = f"[{event(f'a{depth}')},{event(f'deep{depth}', nested(depth))},{event(f'b{depth}')}]"
        r = client.post(
            "/api/v1/events",
            content=body,
            headers={"Content-Type": "application/cloudevents-batch+json", "Prefer": "return=representation"},
        )
        assert r.status_code == 200, r.text
        outcomes = [(e["id"], e["status"], e.get("reason")) for e in r.json()["events"]]
        assert outcomes[0] == (f"a{depth}", "accepted", None) and outcomes[2] == (f"b{depth}", "accepted", None)
        assert outcomes[1][1:] == ("rejected", "invalid_data"), depth
        assert "64 levels" in r.json()["events"][1]["message"]
    # 64 levels of data are within the bound
    r = client.post(
        "/api/v1/events", content=event("ok64", nested(64)), headers={"Content-Type": "application/cloudevents+json"}
    )
    assert r.status_code in (204, 400), r.text
    assert r.status_code == 204 or r.json()["rejected"][0]["reason"] != "invalid_data"
    dead = client.get("/api/v1/dead-letters", params={"reason": "invalid_data"})
    assert dead.status_code == 200 and len(dead.json()["items"]) >= 4


def test_a_body_that_is_only_brackets_is_a_problem_not_a_crash(client: httpx.Client) -> None:
    batch = {"Content-Type": "application/cloudevents-batch+json"}
    assert_problem(client.post("/api/v1/events", content="[" * 200_000, headers=batch), 400, "malformed_json")
    r = client.post("/api/v1/events", content="[" * 200_000 + "]" * 200_000, headers=batch)
    assert r.status_code == 400 and r.json()["rejected"][0]["reason"] == "invalid_data"


FULL_WIDTH_2026 = "\uff12\uff10\uff12\uff16"
LITERAL_30K = "{" + ", ".join(f"'k{i}': '{'x' * 1000}'" for i in range(30)) + "}"
assert len(LITERAL_30K) > 30_000


@pytest.mark.parametrize(
    ("method", "path", "body", "params", "status", "code"),
    [
        ("GET", "/api/v1/billing/plans/pro/versions/%C2%B2", None, None, 400, "invalid_parameter"),
        ("GET", "/api/v1/billing/plans/pro/versions/99999999999999999999999", None, None, 400, "invalid_parameter"),
        ("POST", "/api/v1/keys", {"scopes": 5}, None, 400, "invalid_key_request"),
        ("POST", "/api/v1/keys", {"scopes": ["read"], "name": 5}, None, 400, "invalid_key_request"),
        ("POST", "/api/v1/portal/tokens", {"subject": "acme", "expiresIn": 10**30}, None, 400, "invalid_portal_token"),
        ("POST", "/api/v1/portal/tokens", {"subject": "acme", "expiresIn": 2**62}, None, 400, "invalid_ttl"),
        ("POST", "/api/v1/portal/tokens", {"subject": "acme", "expiresIn": -1}, None, 400, "invalid_ttl"),
        ("POST", "/api/v1/meters/m/query", {"filterGroupBy": [None]}, None, 400, "invalid_query"),
        ("POST", "/api/v1/meters/m/query", "x", None, 400, "invalid_query"),
        ("POST", "/api/v1/meters/m/query", {"subject": 5}, None, 400, "invalid_query"),
        ("POST", "/api/v1/meters/m/query", {"groupBy": 5}, None, 400, "invalid_query"),
        ("POST", "/api/v1/meters/m/query", {"windowTimeZone": "A" * 300}, None, 400, "invalid_time_zone"),
        ("POST", "/api/v1/meters/m/query", {"windowTimeZone": "America"}, None, 400, "invalid_time_zone"),
        ("POST", "/api/v1/meters/m/query", {"filterGroupBy": LITERAL_30K}, None, 400, "invalid_query"),
        ("GET", "/api/v1/meters/m/query", None, {"filterGroupBy": LITERAL_30K}, 400, "invalid_group_by"),
        ("GET", "/api/v1/meters/m/query", None, {"filterGroupBy": "{'a': " * 3000}, 400, "invalid_filter"),
        ("GET", "/api/v1/meters/m/query", None, {"filterGroupBy": "__import__('os')"}, 400, "invalid_filter"),
        (
            "POST",
            "/api/v1/meters/m/query",
            {"windowSize": "MONTH", "from": "2026-01-01T00:00:00Z", "to": "9999-12-01T00:00:00Z"},
            None,
            400,
            "too_many_windows",
        ),
        (
            "POST",
            "/api/v1/meters/m/query",
            {"windowSize": "MONTH", "from": "2026-01-01T00:00:00Z", "to": "10000-01-01T00:00:00Z"},
            None,
            400,
            "invalid_time",
        ),
        ("GET", "/api/v1/meters/m/query", None, {"from": "0001-01-01T00:00:00+01:00"}, 400, "invalid_time"),
        ("GET", "/api/v1/meters/m/query", None, {"to": "9999-12-31T23:59:00-01:00"}, 400, "invalid_time"),
        ("GET", "/api/v1/meters/m/query", None, {"from": FULL_WIDTH_2026 + "-01-01T00:00:00Z"}, 400, "invalid_time"),
        ("GET", "/api/v1/dead-letters", None, {"limit": "²"}, 400, "invalid_parameter"),
        ("GET", "/api/v1/dead-letters", None, {"after": "1_000"}, 400, "invalid_parameter"),
        ("POST", "/api/v1/customers", json.loads(nested(100)), None, 400, "too_deeply_nested"),
    ],
)
def test_hostile_requests_get_a_stable_code(
    client: httpx.Client, method: str, path: str, body: Any, params: Any, status: int, code: str
) -> None:
    assert_problem(client.request(method, path, json=body, params=params), status, code)


def test_a_month_query_up_to_the_last_representable_month(client: httpx.Client) -> None:
    body = {"windowSize": "MONTH", "from": "9000-01-01T00:00:00Z", "to": "9999-12-31T23:59:00Z"}
    for zone in ("UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"):
        r = client.post("/api/v1/meters/m/query", json={**body, "windowTimeZone": zone})
        assert r.status_code == 200, r.text
        assert r.json()["to"] == "9999-12-31T23:59:00.000Z"
    r = client.get("/api/v1/meters/m/query", params={"from": "0001-01-01T00:00:00Z", "to": "0002-01-01T00:00:00Z"})
    assert r.status_code == 200 and r.json()["from"] == "0001-01-01T00:00:00.000Z"


def test_a_string_subject_or_group_by_is_a_list_of_one(client: httpx.Client) -> None:
    two = [event("s1", '{"v": 2}', subject="one"), event("s2", '{"v": 5}', subject="other")]
    r = client.post(
        "/api/v1/events", content=f"[{','.join(two)}]", headers={"Content-Type": "application/cloudevents-batch+json"}
    )
    assert r.status_code == 204, r.text
    rng = {"filterGroupBy": {"subject": ["one", "other"]}}
    as_list = client.post("/api/v1/meters/m/query", json={**rng, "subject": ["one"]}).json()["data"]
    as_text = client.post("/api/v1/meters/m/query", json={**rng, "subject": "one"}).json()["data"]
    assert as_text == as_list and [(row["subject"], row["value"]) for row in as_text] == [("one", 2)]
    grouped = client.post("/api/v1/meters/m/query", json={**rng, "groupBy": "subject"}).json()["data"]
    assert sorted((row["subject"], row["value"]) for row in grouped) == [("one", 2), ("other", 5)]


# -- the class behind them: every endpoint, hostile bodies and parameters -----------------------

HOSTILE_BODIES: list[bytes] = [
    b"5",
    b'"x"',
    b"null",
    b"[null]",
    b"{}",
    b'{"a": 1}',
    b"[]",
    b"{",
    b"\xff\xfe",
    nested(3_000).encode(),
    b"[" * 3_000 + b"]" * 3_000,
    b'{"key": 1e999999, "amount": 1e999999, "subject": 1e999999}',
    b'{"version": 100000000000000000000000000000, "anchorDay": 100000000000000000000000000000}',
    b'{"name": "' + b"n" * 100_000 + b'"}',
    b'{"key": "\\u0000", "type": "\\ud800", "subject": "\\u0000"}',
]


SEEDED = {"meter": "m", "customer": "acme", "subject": "acme", "entitlement": "f", "feature": "f", "plan": "pro"}


def _fill(path: str, existing: bool) -> str:
    for name, value in SEEDED.items():
        path = path.replace("{" + name + "}", value if existing else f"no-{value}")
    return path.replace("{version}", "1").replace("{", "").replace("}", "")


def _routes(*methods: str, existing: bool = True) -> list[tuple[str, str]]:
    """Every route of the app with one of ``methods`` (ids seeded, or ``existing=False``: unknown)."""
    return sorted(
        {
            (m, _fill(route.path, existing))
            for route in ROUTES
            for m in getattr(route, "methods", None) or ()
            if m in methods and route.path != "/api/v1/events"
        }
    )


@pytest.mark.parametrize(("method", "path"), _routes("POST", "PUT"))
def test_no_body_makes_any_endpoint_fail(client: httpx.Client, method: str, path: str) -> None:
    for body in HOSTILE_BODIES:
        problem_or_success(client.request(method, path, content=body, headers={"Content-Type": "application/json"}))


HOSTILE_PARAMS: list[dict[str, str]] = [
    {"limit": "²", "after": "٣", "page": "1_000", "pageSize": " 7 "},
    {"limit": "9" * 5000, "page": "99999999999999999999999", "pageSize": "-1"},
    {"from": "0001-01-01T00:00:00+14:00", "to": "9999-12-31T23:59:59-14:00"},
    {"from": "9999-12-31T23:59:00Z", "to": "0001-01-01T00:00:00Z", "time": "10000-01-01T00:00:00Z"},
    {"windowSize": "MINUTE", "from": "1900-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
    {"windowTimeZone": "../../../../etc/passwd", "windowSize": "HOUR"},
    {"windowTimeZone": "America", "format": "x" * 1000, "groupBy": "\x00"},
    {"customer": "\x00", "subject": "\ud7ff" * 10, "feature": "%", "includeDeleted": "maybe"},
    {"filterGroupBy": "{" * 5000, "advancedMeterGroupByFilters": "[" * 5000},
    {"effectiveAt": "yesterday", "at": "2026-13-45T99:99:99Z", "ingestedAtFrom": "x"},
]


# DELETE only on unknown ids (and never the dead-letter purge): the seeded data stays for the others
@pytest.mark.parametrize(
    ("method", "path"),
    _routes("GET") + [r for r in _routes("DELETE", existing=False) if r[1] != "/api/v1/dead-letters"],
)
def test_no_query_parameter_makes_any_endpoint_fail(client: httpx.Client, method: str, path: str) -> None:
    for params in HOSTILE_PARAMS:
        problem_or_success(client.request(method, path, params=params))


# -- every member of every body: one hostile value at a time in an otherwise valid body ------------

T = "2026-03-01T00:00:00Z"
ENTITLEMENT = {
    "type": "metered",
    "featureKey": "f",
    "issueAfterReset": 10,
    "softLimit": 5,
    "usagePeriod": {"interval": "MONTH", "anchor": T},
    "metadata": {"a": "b"},
    "measureUsageFrom": "CURRENT_PERIOD_START",
    "isSoftLimit": False,
}
VALID_BODIES: list[tuple[str, str, Any]] = [
    (
        "POST",
        "/api/v1/meters",
        {
            "slug": "m2",
            "eventType": "t",
            "aggregation": "SUM",
            "valueProperty": "$.v",
            "groupBy": {"g": "$.g"},
            "eventFrom": T,
            "metadata": {"a": "b"},
        },
    ),
    (
        "POST",
        "/api/v1/meters/m/query",
        {
            "from": T,
            "to": "2026-03-02T00:00:00Z",
            "windowSize": "HOUR",
            "windowTimeZone": "Asia/Kathmandu",
            "subject": ["acme"],
            "groupBy": ["subject"],
            "filterGroupBy": {"subject": ["acme"]},
            "advancedMeterGroupByFilters": {"subject": {"$in": ["acme"]}},
        },
    ),
    ("POST", "/api/v1/keys", {"scopes": ["read"], "name": "k"}),
    ("PUT", "/api/v1/settings", {"unknownSubjects": "accept"}),
    ("POST", "/api/v1/customers", {"key": "c2", "name": "C", "subjectKeys": ["c2"], "timezone": "UTC", "metadata": {}}),
    ("PUT", "/api/v1/customers/acme", {"key": "acme", "name": "A", "subjectKeys": ["acme"], "timezone": "UTC"}),
    ("POST", "/api/v1/customers/acme/entitlements", ENTITLEMENT),
    ("PUT", "/api/v1/subjects/acme/entitlements/f/override", ENTITLEMENT),
    (
        "POST",
        "/api/v1/features",
        {
            "key": "f2",
            "name": "F",
            "meterSlug": "m",
            "meterGroupByFilters": {"g": "x"},
            "advancedMeterGroupByFilters": {"g": {"$eq": "x"}},
        },
    ),
    ("POST", "/api/v1/customers/acme/entitlements", {"type": "static", "featureKey": "f", "config": '{"a": 1}'}),
    ("POST", "/api/v1/billing/subscriptions/nope/change", {"plan": "pro", "version": 1, "at": T}),
    ("POST", "/api/v1/billing/subscriptions/nope/cancel", {"at": T}),
    ("POST", "/api/v1/notification/events/nope/resend", {"channels": ["c"]}),
    ("POST", "/api/v1/subjects", [{"key": "s", "displayName": "S", "metadata": {"a": 1}}]),
    (
        "POST",
        "/api/v1/subjects/acme/entitlements/f/grants",
        {
            "amount": 10,
            "effectiveAt": T,
            "expiration": {"duration": "DAY", "count": 1},
            "priority": 1,
            "maxRolloverAmount": 0,
            "recurrence": {"interval": "DAY", "anchor": T},
        },
    ),
    ("POST", "/api/v1/subjects/acme/entitlements/f/reset", {"effectiveAt": T, "retainAnchor": False}),
    ("POST", "/api/v1/entitlements/check", {"customer": "acme", "features": [{"feature": "f", "quantity": 1}]}),
    (
        "POST",
        "/api/v1/notification/channels",
        {"type": "WEBHOOK", "name": "w", "url": "https://example.com/hook", "customHeaders": {"x-a": "b"}},
    ),
    (
        "POST",
        "/api/v1/notification/rules",
        {
            "type": "entitlements.balance.threshold",
            "name": "r",
            "channels": [],
            "thresholds": [{"type": "PERCENT", "value": 50}],
            "minElapsedPercent": 10,
            "spikeFactor": 2,
        },
    ),
    ("POST", "/api/v1/portal/tokens", {"subject": "acme", "allowedMeterSlugs": ["m"], "expiresIn": 60}),
    ("POST", "/api/v1/portal/tokens/invalidate", {"subject": "nobody"}),
    ("POST", "/api/v1/billing/plans", {**PLAN, "plan": "pro2"}),
    ("PUT", "/api/v1/billing/plans/pro/versions/2", {**PLAN, "version": 2}),
    (
        "POST",
        "/api/v1/billing/subscriptions",
        {"customer": "acme", "plan": "pro", "version": 1, "start": T, "anchorDay": 1, "zone": "UTC"},
    ),
    (
        "POST",
        "/api/v1/customers/acme/credits",
        {"key": "promo", "currency": "USD", "amount": "10.00", "effectiveAt": T, "priority": 1, "expiresAt": None},
    ),
]
HOSTILE_VALUES: list[Any] = [
    10**30,
    -(10**30),
    2**62,
    -(2**62),
    2**31,
    0,
    -1,
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-14:00",
    "P99999999999Y",
    "1e999999",
    "NaN",
    "-Infinity",
    "1_000",
    "٣",
    " 7 ",
    "x" * 70_000,
    "\x00",
    None,
    True,
    [],
    {},
    [None],
    json.loads(nested(60)),
]


def mutations(value: Any) -> Iterator[Any]:
    """``value`` with one member (at any depth) replaced by each hostile value in turn."""
    if isinstance(value, dict):
        for key in value:
            for bad in HOSTILE_VALUES:
                yield {**value, key: bad}
            for inner in mutations(value[key]):
                yield {**value, key: inner}
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for bad in HOSTILE_VALUES:
                yield [*value[:i], bad, *value[i + 1 :]]
            for inner in mutations(item):
                yield [*value[:i], inner, *value[i + 1 :]]


@pytest.fixture(scope="module")
def own_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A server of its own: these requests may succeed and change what they touch."""
    s = start_server(tmp_path_factory.mktemp("mutations") / "data")
    with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}, timeout=60) as c:
        seed(c)
        assert c.post("/api/v1/billing/plans/pro/versions/1/publish").status_code == 200
        assert c.post("/api/v1/billing/plans", json={**PLAN, "version": 2}).status_code == 201
        yield c
    s.stop()


@pytest.mark.parametrize(("method", "path", "body"), VALID_BODIES, ids=[f"{m} {p}" for m, p, _ in VALID_BODIES])
def test_no_member_of_a_body_makes_its_endpoint_fail(
    own_client: httpx.Client, method: str, path: str, body: Any
) -> None:
    failures = []
    for mutated in mutations(body):
        r = own_client.request(method, path, json=mutated)
        if r.status_code >= 500 or (r.status_code >= 400 and "problem+json" not in r.headers["content-type"]):
            failures.append(f"{r.status_code} for {json.dumps(mutated)[:300]}")
    assert not failures, "\n".join(failures)
