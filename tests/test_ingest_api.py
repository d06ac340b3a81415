"""Ingest through the real app: outcomes, every rejection reason, limits, dead letters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import MODES, T0_US, Api, build_api, mode_api

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)


@pytest.fixture(params=MODES)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app in each storage mode: these tests hold for both."""
    yield from mode_api(request, tmp_path)


def ev(id_: str, **over: Any) -> dict[str, Any]:
    base = {
        "specversion": "1.0",
        "id": id_,
        "source": "src",
        "type": "prompt",
        "subject": "acme",
        "data": {"tokens": 5, "model": "gpt"},
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def report(api: Api, events: Any) -> dict[str, Any]:
    r = api.post_events(events, **{"Prefer": "return=representation"})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"] == f"urn:meterline:problem:{code}"
    assert body["title"] and body["detail"] and body["instance"]
    return body


@pytest.fixture
def metered(api: Api) -> Api:
    assert (
        api.create_meter(
            slug="tokens", eventType="prompt", aggregation="SUM", valueProperty="$.tokens", groupBy={"model": "$.model"}
        ).status_code
        == 201
    )
    return api


def total(api: Api, meter: str = "tokens") -> Any:
    rows = api.query(meter).json()["data"]
    return sum(r["value"] for r in rows)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+json",
        "application/json",
        "application/json; charset=utf-8",
        "application/cloudevents+json; charset=UTF-8",
    ],
)
def test_single_event_each_media_type(metered: Api, content_type: str) -> None:
    assert metered.post_events(ev("one"), content_type).status_code == 204
    assert total(metered) == 5


@pytest.mark.parametrize("content_type", ["application/cloudevents-batch+json", "application/json"])
def test_batch_each_media_type(metered: Api, content_type: str) -> None:
    assert metered.post_events([ev("a"), ev("b")], content_type).status_code == 204
    assert total(metered) == 10


def test_duplicates_counted_once_and_conflicts_flagged(metered: Api) -> None:
    assert metered.post_events([ev("a"), ev("b")]).status_code == 204
    body = report(metered, [ev("a"), ev("b", data={"tokens": 99, "model": "gpt"}), ev("c"), ev("c")])
    statuses = [(e["id"], e["status"], e.get("conflict")) for e in body["events"]]
    assert statuses == [
        ("a", "duplicate", False),
        ("b", "duplicate", True),
        ("c", "accepted", None),
        ("c", "duplicate", False),
    ]
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (1, 3, 0)
    assert total(metered) == 15  # first payload wins
    metrics = metered.client.get("/metrics").text
    assert "meterline_events_duplicate_conflict_total 1.0" in metrics
    assert 'meterline_events_total{outcome="duplicate"} 3.0' in metrics


def test_same_id_other_source_is_another_event(metered: Api) -> None:
    assert metered.post_events([ev("a"), ev("a", source="other")]).status_code == 204
    assert total(metered) == 10


def test_dedupe_survives_restart(tmp_path: Path) -> None:
    for round_ in range(2):
        gen = build_api(tmp_path)
        api = next(gen)
        if round_ == 0:
            api.create_meter(slug="n", eventType="prompt", aggregation="COUNT")
        body = report(api, [ev("x"), ev("y")])
        assert body["accepted"] == (2 if round_ == 0 else 0)
        assert body["duplicates"] == (0 if round_ == 0 else 2)
        assert total(api, "n") == 2
        gen.close()


def test_dedupe_window_forgets_old_keys(tmp_path: Path) -> None:
    gen = build_api(tmp_path, ingest={"dedupe_window": "PT1H"})
    api = next(gen)
    api.create_meter(slug="n", eventType="prompt", aggregation="COUNT")
    assert report(api, [ev("k")])["accepted"] == 1
    api.clock.advance(1800)
    assert report(api, [ev("k")])["duplicates"] == 1
    api.clock.advance(3600)
    assert report(api, [ev("k")])["accepted"] == 1
    assert total(api, "n") == 2
    gen.close()


REJECTIONS = [
    (ev("m1", id=None), "missing_field"),
    (ev("m2", source=""), "missing_field"),
    (ev("m3", subject=None), "missing_field"),
    (ev("m4", type=None), "missing_field"),
    (ev("m5", specversion="0.3"), "unsupported_specversion"),
    (ev("m6", time="yesterday"), "invalid_time"),
    (ev("m7", time="2026-03-01T12:00:00"), "invalid_time"),
    (ev("m8", time="2026-03-01T12:10:00Z"), "time_in_future"),
    (ev("m9", time="2025-01-01T00:00:00Z"), "time_too_old"),
    (ev("m10", data=[1, 2]), "invalid_data"),
    (ev("m11", datacontenttype="text/plain"), "invalid_data"),
    (ev("m12", data={"model": "gpt"}), "unreadable_value"),
    (ev("m13", data={"tokens": "lots", "model": "gpt"}), "unreadable_value"),
    (ev("m14", data={"tokens": True, "model": "gpt"}), "unreadable_value"),
    (ev("m15", data={"tokens": "1e999", "model": "gpt"}), "unreadable_value"),
    (ev("m16", data={"tokens": 1, "model": {"nested": 1}}), "unreadable_group"),
    (ev("m17", id=17), "invalid_field"),
    ("not an object", "malformed_event"),
]


@pytest.mark.parametrize(("event", "reason"), REJECTIONS, ids=[r for _, r in REJECTIONS])
def test_each_rejection_reason(metered: Api, event: Any, reason: str) -> None:
    r = metered.post_events([ev("good"), event])
    body = assert_problem(r, 400, "events_rejected")
    assert body["accepted"] == 1
    assert [(x["index"], x["reason"]) for x in body["rejected"]] == [(1, reason)]
    assert body["rejected"][0]["message"]
    assert total(metered) == 5  # the valid event was recorded, the bad one never counts
    letters = metered.client.get("/api/v1/dead-letters", headers=metered.headers()).json()["items"]
    assert [d["reason"] for d in letters] == [reason]
    assert letters[0]["event"] == event


def test_numbers_are_exact_decimals(metered: Api) -> None:
    events = [ev(str(i), data={"tokens": v, "model": "gpt"}) for i, v in enumerate(["0.1", 0.2, "1e2", 3, "-0.3"])]
    assert metered.post_events(events).status_code == 204
    r = metered.query("tokens")
    assert b'"value":103.0' in r.content or b'"value":103' in r.content
    assert metered.query("tokens", **{"Accept": "text/csv"}).text.strip().endswith(",,103")


def test_group_cardinality_cap(tmp_path: Path) -> None:
    gen = build_api(tmp_path, ingest={"max_group_cardinality": 2})
    api = next(gen)
    api.create_meter(
        slug="t", eventType="prompt", aggregation="SUM", valueProperty="$.tokens", groupBy={"model": "$.model"}
    )
    body = report(api, [ev(str(i), data={"tokens": 1, "model": m}) for i, m in enumerate("abac")])
    assert [e["status"] for e in body["events"]] == ["accepted", "accepted", "accepted", "rejected"]
    assert body["events"][3]["reason"] == "group_cardinality_exceeded"
    gen.close()


def test_body_and_batch_limits(tmp_path: Path) -> None:
    gen = build_api(tmp_path, server={"max_body_bytes": 2048, "max_events_per_request": 3})
    api = next(gen)
    assert_problem(api.post_events([ev(str(i)) for i in range(4)]), 413, "too_many_events")
    big = [ev("big", data={"tokens": 1, "pad": "x" * 4000})]
    assert_problem(api.post_events(big), 413, "body_too_large")
    gen.close()


def test_media_type_and_malformed_bodies(api: Api) -> None:
    h = api.headers(**{"Content-Type": "text/plain"})
    assert_problem(api.client.post("/api/v1/events", content=b"{}", headers=h), 415, "unsupported_media_type")
    h = api.headers(**{"Content-Type": "application/json"})
    assert_problem(api.client.post("/api/v1/events", content=b"{not json", headers=h), 400, "malformed_json")
    assert_problem(api.client.post("/api/v1/events", content=b"42", headers=h), 400, "malformed_json")
    assert_problem(api.post_events([ev("a")], "application/cloudevents+json"), 400, "malformed_json")
    assert_problem(api.post_events(ev("a"), "application/cloudevents-batch+json"), 400, "malformed_json")


def test_time_keeps_microseconds_and_offsets(metered: Api) -> None:
    t = "2026-03-01T17:29:59.123456+05:30"  # = 11:59:59.123456Z
    assert metered.post_events([ev("t", time=t)]).status_code == 204
    listed = metered.client.get("/api/v1/events", headers=metered.headers()).json()
    assert listed[0]["event"]["time"] == t
    rows = metered.query("tokens", {"from": "2026-03-01T11:59:00Z", "to": "2026-03-01T12:00:00Z"}).json()["data"]
    assert [r["value"] for r in rows] == [5]


def test_auth_is_required_and_scoped(api: Api) -> None:
    assert_problem(api.client.get("/api/v1/meters"), 401, "missing_api_key")
    r = api.client.get("/api/v1/meters", headers={"Authorization": "Bearer nope"})
    assert_problem(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    ingest_only = api.new_key(["ingest"])
    assert_problem(api.client.get("/api/v1/meters", headers=api.headers(ingest_only)), 403, "missing_scope")
    r = api.client.post(
        "/api/v1/events",
        content=msgspec.json.encode([ev("z")]),
        headers=api.headers(ingest_only, **{"Content-Type": "application/json"}),
    )
    assert r.status_code == 204
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/readyz").status_code == 200


def test_namespaces_are_isolated(api: Api) -> None:
    other = api.new_key(["admin"], "tenant2")
    api.create_meter(slug="n", eventType="prompt", aggregation="COUNT")
    assert (
        api.client.post(
            "/api/v1/meters",
            json={"slug": "n", "eventType": "prompt", "aggregation": "COUNT"},
            headers=api.headers(other),
        ).status_code
        == 201
    )
    api.post_events([ev("same")])
    r = api.client.post(
        "/api/v1/events",
        content=msgspec.json.encode([ev("same"), ev("other")]),
        headers=api.headers(other, **{"Content-Type": "application/json"}),
    )
    assert r.status_code == 204
    mine = api.query("n").json()["data"]
    theirs = api.client.get("/api/v1/meters/n/query", headers=api.headers(other)).json()["data"]
    assert [r["value"] for r in mine] == [1] and [r["value"] for r in theirs] == [2]


def test_dead_letters_filter_and_purge(metered: Api) -> None:
    metered.post_events([ev("a", specversion="2"), ev("b", source="s2", data={}), ev("c", time="x")])
    h = metered.headers()
    items = metered.client.get("/api/v1/dead-letters", params={"reason": "unreadable_value"}, headers=h).json()
    assert [d["eventId"] for d in items["items"]] == ["b"]
    items = metered.client.get("/api/v1/dead-letters", params={"source": "src"}, headers=h).json()
    assert sorted(d["eventId"] for d in items["items"]) == ["a", "c"]
    assert metered.client.delete("/api/v1/dead-letters", params={"reason": "invalid_time"}, headers=h).json() == {
        "purged": 1
    }
    left = metered.client.get("/api/v1/dead-letters", headers=h).json()["items"]
    assert sorted(d["eventId"] for d in left) == ["a", "b"]


def test_unknown_route_is_a_problem(api: Api) -> None:
    assert_problem(api.client.get("/api/v1/nothing", headers=api.headers()), 404, "not_found")


def test_clock_is_frozen_for_default_time(metered: Api) -> None:
    metered.post_events([ev("now")])
    listed = metered.client.get("/api/v1/events", headers=metered.headers()).json()
    assert listed[0]["ingestedAt"] == "2026-03-01T12:00:00.000Z"
    assert T0_US == 1_772_366_400_000_000
