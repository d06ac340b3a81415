"""The built-in meter ``ingested_bytes`` (``[metering] ingested_bytes``) through the HTTP API:
each accepted event counts the bytes of its canonical JSON once, whatever the transport, per
subject and window; duplicates, rejected and held events do not count; corrections move it;
it prices a plan line; its slug is reserved and the meter read-only."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cloudevents.conversion import to_binary, to_json
from cloudevents.http import CloudEvent
from conftest import Api, build_api, build_scale_api
from scale_site import Site
from test_billing_api import add_customer, get, invoice, lines, move_to, ok, post, run
from test_ingest_api import assert_problem

from meterline.adapters.sqlite import erasure_hours
from meterline.domain.events.size import time_text

REPORT = {"Prefer": "return=representation"}


def ev(id_: str, subject: str, time: str, type_: str = "request", **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id_,
        "source": "t",
        "type": type_,
        "subject": subject,
        "time": time,
        "data": data,
    }


def size(event: dict[str, Any]) -> int:
    """The canonical JSON of the docs, computed independently of the server's code."""
    kept = {k: v for k, v in event.items() if k != "datacontenttype"}
    return len(json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path, metering={"ingested_bytes": True}, billing={"scheduler_enabled": False})


def total(api: Api, **params: str) -> int:
    rows = ok(api.query("ingested_bytes", params))["data"]
    return int(sum(r["value"] for r in rows))


def test_each_accepted_event_counts_its_canonical_size_once_whatever_the_transport(api: Api) -> None:
    one = ev("s1", "acme", "2026-03-01T10:00:00Z", calls=1)
    batch = [ev("b1", "acme", "2026-03-01T10:01:00Z", calls=12, note="été"), ev("b2", "beta", "2026-03-01T10:02:00Z")]
    binary = CloudEvent(
        {"id": "c1", "source": "t", "type": "prompt", "subject": "acme", "time": "2026-03-01T10:03:00Z"},
        {"tokens": 5},
    )
    for _ in range(2):  # the second round is all retries: duplicates, never counted
        assert api.post_events(one, "application/cloudevents+json").status_code == 204
        assert api.post_events(batch).status_code == 204
        headers, body = to_binary(binary)
        r = api.client.post("/api/v1/events", content=body, headers={**api.headers(), **headers})
        assert r.status_code == 204, r.text
    as_structured = json.loads(to_json(binary))
    expected = size(one) + size(batch[0]) + size(batch[1]) + size(as_structured)
    assert total(api) == expected
    # a pretty-printed resend of a new event measures as the compact one
    spaced = ev("s2", "acme", "2026-03-01T10:04:00Z", calls=3)
    pretty = json.dumps(spaced, indent=4).encode()
    r = api.client.post("/api/v1/events", content=pretty, headers=api.headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 204, r.text
    assert total(api) == expected + size(spaced)


def test_rejected_and_duplicates_do_not_count(api: Api) -> None:
    good = ev("g1", "acme", "2026-03-01T10:00:00Z", calls=1)
    bad = {**ev("x1", "acme", "2026-03-01T10:00:00Z"), "specversion": "0.3"}
    future = ev("f1", "acme", "2030-01-01T00:00:00Z")
    report = ok(api.post_events([good, bad, future, good], **REPORT))
    assert [e["status"] for e in report["events"]] == ["accepted", "rejected", "rejected", "duplicate"]
    assert total(api) == size(good)


def test_per_customer_per_hour_windows(api: Api) -> None:
    events = [
        ev("a1", "acme", "2026-03-01T09:10:00Z", calls=1),
        ev("a2", "acme", "2026-03-01T09:50:00Z", calls=100),
        ev("a3", "acme", "2026-03-01T10:05:00Z", type_="storage", gb="1.5"),
        ev("z1", "zeta", "2026-03-01T09:30:00Z", calls=7),
    ]
    assert api.post_events(events).status_code == 204
    params = {"from": "2026-03-01T09:00:00Z", "to": "2026-03-01T11:00:00Z", "windowSize": "HOUR", "groupBy": "subject"}
    rows = ok(api.query("ingested_bytes", params))["data"]
    got = {(r["subject"], r["windowStart"]): int(r["value"]) for r in rows if r["value"]}
    assert got == {
        ("acme", "2026-03-01T09:00:00.000Z"): size(events[0]) + size(events[1]),
        ("acme", "2026-03-01T10:00:00.000Z"): size(events[2]),
        ("zeta", "2026-03-01T09:00:00.000Z"): size(events[3]),
    }
    # an exact partial edge: from 09:30:00.5 reads the partial minute from the ledger
    edge = {"from": "2026-03-01T09:30:00.500Z", "to": "2026-03-01T09:50:30Z", "subject": "acme"}
    assert total(api, **edge) == size(events[1])
    # a customer's usage: its subject keys
    add_customer(api, "acme")
    by_customer = {"from": "2026-03-01T09:00:00Z", "to": "2026-03-01T11:00:00Z", "filterCustomerId": "acme"}
    assert total(api, **by_customer) == size(events[0]) + size(events[1]) + size(events[2])


def test_quarantined_events_count_once_released(api: Api) -> None:
    settings = api.client.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}, headers=api.headers())
    assert settings.status_code == 200, settings.text
    held = ev("q1", "newco", "2026-03-01T10:00:00Z", calls=4)
    report = ok(api.post_events([held], **REPORT))
    assert report["events"][0]["status"] == "quarantined"
    assert total(api) == 0
    released = ok(post(api, "/api/v1/customers", {"key": "newco"}), 201)["released"]
    assert released == {"accepted": 1, "rejected": 0}
    assert total(api) == size(held)


def test_voids_and_amends_move_it_as_any_meter(api: Api) -> None:
    first, second = ev("v1", "acme", "2026-03-01T10:00:00Z", calls=1), ev("v2", "acme", "2026-03-01T10:10:00Z", calls=2)
    assert api.post_events([first, second]).status_code == 204
    assert total(api) == size(first) + size(second)
    amended = {**first, "data": {"calls": 1, "comment": "a much longer payload than before"}}
    r = post(api, "/api/v1/events/v1/amend", {"source": "t", "reason": "fix", "event": amended})
    assert r.status_code == 201, r.text
    assert total(api) == size(amended) + size(second)
    r = post(api, "/api/v1/events/v2/void", {"source": "t", "reason": "test traffic"})
    assert r.status_code == 201, r.text
    assert total(api) == size(amended)
    check = api.client.get("/api/v1/meters/ingested_bytes/query", params={"windowSize": "HOUR"}, headers=api.headers())
    assert [int(r["value"]) for r in ok(check)["data"]] == [size(amended)]


def test_the_slug_is_reserved_and_the_meter_read_only(api: Api) -> None:
    listed = ok(api.client.get("/api/v1/meters", headers=api.headers()))
    mine = [m for m in listed if m["slug"] == "ingested_bytes"]
    assert len(mine) == 1 and mine[0]["eventType"] == "*" and mine[0]["aggregation"] == "SUM"
    spec = {"slug": "ingested_bytes", "eventType": "request", "aggregation": "COUNT"}
    body = assert_problem(api.create_meter(**spec), 400, "invalid_meter")
    assert "reserved" in body["detail"]
    put = api.client.put("/api/v1/meters/ingested_bytes", json={"name": "mine"}, headers=api.headers())
    assert "built in" in assert_problem(put, 409, "meter_builtin")["detail"]
    delete = api.client.delete("/api/v1/meters/ingested_bytes", headers=api.headers())
    assert_problem(delete, 409, "meter_builtin")
    assert ok(api.client.get("/api/v1/meters/ingested_bytes", headers=api.headers()))["slug"] == "ingested_bytes"


def test_off_by_default_and_the_slug_reserved_still(tmp_path: Path) -> None:
    gen = build_api(tmp_path)
    api = next(gen)
    try:
        assert ok(api.client.get("/api/v1/meters", headers=api.headers())) == []
        assert_problem(api.query("ingested_bytes"), 404, "meter_not_found")
        spec = {"slug": "ingested_bytes", "eventType": "request", "aggregation": "COUNT"}
        assert_problem(api.create_meter(**spec), 400, "invalid_meter")
    finally:
        gen.close()


def test_prices_a_plan_line(api: Api) -> None:
    plan = {
        "plan": "pro",
        "name": "Pro",
        "currency": "USD",
        "cards": [
            {
                "key": "ingest",
                "name": "Ingested data",
                "meter": "ingested_bytes",
                "model": {"model": "per_unit", "unitPrice": "0.001"},
            }
        ],
    }
    add_customer(api, "acme")
    ok(post(api, "/api/v1/billing/plans", plan), 201)
    ok(post(api, "/api/v1/billing/plans/pro/versions/1/publish"))
    sub = {"customer": "acme", "plan": "pro", "start": "2026-03-01T00:00:00Z"}
    ok(post(api, "/api/v1/billing/subscriptions", sub), 201)
    sent = [
        ev("p1", "acme", "2026-03-01T10:00:00Z", calls=1),
        ev("p2", "acme-eu", "2026-03-01T11:00:00Z", type_="storage", gb="2"),
        ev("p3", "stranger", "2026-03-01T11:00:00Z", calls=1),
    ]
    assert api.post_events(sent).status_code == 204
    move_to(api, "2026-04-01T00:00:00Z")
    assert run(api)
    invoices = ok(get(api, "/api/v1/invoices", customer="acme"))
    items = invoices["items"] if isinstance(invoices, dict) else invoices
    inv = invoice(api, items[0]["number"])
    quantity = size(sent[0]) + size(sent[1])
    amount = f"{quantity * 0.001:.2f}"
    assert lines(inv) == [("usage", "Ingested data", amount, str(quantity), None)]


def test_an_existing_data_file_is_counted_when_turned_on(tmp_path: Path) -> None:
    before = [ev(f"o{i}", "acme", f"2026-03-01T0{i}:00:00Z", calls=i) for i in range(1, 4)]
    gen = build_api(tmp_path)
    api = next(gen)
    try:
        assert api.post_events(before).status_code == 204
    finally:
        gen.close()
    gen = build_api(tmp_path, metering={"ingested_bytes": True})
    api = next(gen)
    try:
        assert total(api) == sum(size(e) for e in before)
        later = ev("n1", "acme", "2026-03-01T11:00:00Z", calls=9)
        assert api.post_events([later]).status_code == 204
        assert total(api) == sum(size(e) for e in [*before, later])
        meter_id = ok(api.client.get("/api/v1/meters/ingested_bytes", headers=api.headers()))["id"]
    finally:
        gen.close()
    # a CLI command on the store run without the setting leaves the meter alone
    args = [sys.executable, "-m", "meterline.cli.main", "billing", "run", "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    gen = build_api(tmp_path, metering={"ingested_bytes": True})
    api = next(gen)
    try:
        assert ok(api.client.get("/api/v1/meters/ingested_bytes", headers=api.headers()))["id"] == meter_id
    finally:
        gen.close()
    gen = build_api(tmp_path)  # a server started with it off: the meter and its usage go
    api = next(gen)
    try:
        assert ok(api.client.get("/api/v1/meters", headers=api.headers())) == []
    finally:
        gen.close()


@pytest.fixture
def scale_api(scale_site: Site, tmp_path: Path) -> Iterator[Api]:
    yield from build_scale_api(scale_site, tmp_path, metering={"ingested_bytes": True})


def test_scale_mode_counts_it_as_the_embedded_mode_does(scale_api: Api) -> None:
    """The sink workers fold it like any meter: the same figures from the ClickHouse rollups,
    partial minutes from its raw events."""
    api = scale_api
    assert "ingested_bytes" in [m["slug"] for m in ok(api.client.get("/api/v1/meters", headers=api.headers()))]
    one = ev("s1", "acme", "2026-03-01T10:00:00Z", calls=1)
    batch = [
        ev("b1", "acme", "2026-03-01T10:20:00Z", type_="storage", gb="1.25"),
        ev("b2", "zeta", "2026-03-01T11:00:00Z"),
    ]
    binary = CloudEvent(
        {"id": "c1", "source": "t", "type": "prompt", "subject": "acme", "time": "2026-03-01T10:40:00Z"}, {"tokens": 5}
    )
    bad = {**ev("x1", "acme", "2026-03-01T10:00:00Z"), "specversion": "0.3"}
    for _ in range(2):  # the second round: duplicates
        assert api.post_events(one, "application/cloudevents+json").status_code == 204
        statuses = [e["status"] for e in ok(api.post_events([*batch, bad], **REPORT))["events"]]
        assert statuses[2] == "rejected" and statuses[:2] in (["accepted"] * 2, ["duplicate"] * 2)
        headers, body = to_binary(binary)
        r = api.client.post("/api/v1/events", content=body, headers={**api.headers(), **headers})
        assert r.status_code == 204, r.text
    acme = size(one) + size(batch[0]) + size(json.loads(to_json(binary)))
    params = {"from": "2026-03-01T09:00:00Z", "to": "2026-03-01T12:00:00Z", "windowSize": "HOUR", "groupBy": "subject"}
    rows = ok(api.query("ingested_bytes", params))["data"]
    got = {(r["subject"], r["windowStart"]): int(r["value"]) for r in rows if r["value"]}
    assert got == {("acme", "2026-03-01T10:00:00.000Z"): acme, ("zeta", "2026-03-01T11:00:00.000Z"): size(batch[1])}
    edge = {"from": "2026-03-01T10:10:00.500Z", "to": "2026-03-01T10:30:00Z", "subject": "acme"}
    assert total(api, **edge) == size(batch[0])
    assert_problem(api.client.delete("/api/v1/meters/ingested_bytes", headers=api.headers()), 409, "meter_builtin")
    spec = {"slug": "ingested_bytes", "eventType": "request", "aggregation": "COUNT"}
    assert_problem(api.create_meter(**spec), 400, "invalid_meter")


@pytest.mark.parametrize("chunk", [2000, 1], ids=["hours-together", "hour-by-hour"])
def test_an_erasure_refolds_it_from_the_rewritten_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """An erasure rewrites the subject's events smaller or larger (a pseudonym, no key, no
    extensions), keeping in each the size it was received with; the meter's hours are folded
    again from the ledger, so every figure stays as it was (under the pseudonym), a rebuild
    still reproduces the rollups, and other subjects keep their figures."""
    monkeypatch.setattr(erasure_hours, "CHUNK", chunk)
    gen = build_api(tmp_path, metering={"ingested_bytes": True}, billing={"scheduler_enabled": False})
    api = next(gen)
    try:
        victim = [
            {**ev(f"v{i}", "victim", f"2026-03-01T0{i}:30:00Z", calls=i, note="x" * 40), "traceparent": "00-ab"}
            for i in range(1, 4)
        ]
        other = ev("o1", "other", "2026-03-01T02:00:00Z", calls=1)
        assert api.post_events([*victim, other]).status_code == 204
        assert total(api) == sum(size(e) for e in [*victim, other])
        ok(post(api, "/api/v1/erasures", {"subject": "victim", "reason": "GDPR"}), 201)
        assert total(api, subject="other") == size(other)
        assert total(api, subject="victim") == 0
        assert total(api) - size(other) == sum(size(e) for e in victim)  # the sizes as received
        hours = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T04:00:00Z", "windowSize": "HOUR"}
        rows = ok(api.query("ingested_bytes", hours))["data"]
        by_hour = {r["windowStart"][11:13]: int(r["value"]) for r in rows if r["value"]}
        assert by_hour == {"01": size(victim[0]), "02": size(victim[1]) + size(other), "03": size(victim[2])}
    finally:
        gen.close()
    env = {**os.environ, "METERLINE_METERING__INGESTED_BYTES": "true"}
    for command in ("rebuild", "verify"):
        args = [sys.executable, "-m", "meterline.cli.main", command, "--data-dir", str(tmp_path / "data")]
        done = subprocess.run(
            [*args, "--check"] if command == "rebuild" else args, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_an_entitlement_on_it_counts_the_customers_bytes(api: Api) -> None:
    add_customer(api, "acme")
    ok(post(api, "/api/v1/features", {"key": "data", "name": "Data", "meterSlug": "ingested_bytes"}), 201)
    body = {"type": "metered", "featureKey": "data", "issueAfterReset": 1000, "usagePeriod": {"interval": "MONTH"},
            "measureUsageFrom": "CURRENT_PERIOD_START"}  # fmt: skip
    ok(post(api, "/api/v1/customers/acme/entitlements", body), 201)
    sent = [ev("e1", "acme", "2026-03-01T10:00:00Z", calls=1), ev("e2", "acme-eu", "2026-03-01T11:00:00Z", calls=2)]
    assert api.post_events([*sent, ev("e3", "other", "2026-03-01T11:00:00Z")]).status_code == 204
    got = ok(get(api, "/api/v1/customers/acme/entitlements/data/value"))
    used = size(sent[0]) + size(sent[1])
    assert (got["usage"], got["balance"], got["hasAccess"]) == (used, 1000 - used, True)


def test_an_event_without_time_counts_the_time_it_was_received(api: Api) -> None:
    untimed = {k: v for k, v in ev("t1", "acme", "", calls=1).items() if k != "time"}
    assert api.post_events([untimed]).status_code == 204
    assert total(api) == size({**untimed, "time": "2026-03-01T12:00:00Z"})  # the frozen clock


@pytest.mark.parametrize("time_us", [0, -1, 1_772_362_800_000_000, 1_772_362_800_120_000, 253_402_300_799_999_999])
def test_the_time_text_is_an_encoded_datetime(time_us: int) -> None:
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_us)
    assert msgspec.json.encode(time_text(time_us)) == msgspec.json.encode(at)


def test_the_dashboard_shows_it_beside_the_users_meters(api: Api) -> None:
    ok(api.create_meter(slug="api_calls", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
    add_customer(api, "acme")
    assert api.post_events([ev("d1", "acme", "2026-03-01T10:00:00Z", calls=3)]).status_code == 204
    c = api.client
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/sign-in").text)
    assert token is not None
    r = c.post(
        "/ui/sign-in", data={"csrf": token.group(1), "key": api.key, "next": "/ui/executive"}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    for path in ("/ui/executive", "/ui/customers/acme", "/ui/reconciliation"):
        page = c.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert ("ingested_bytes" in page.text) is (path != "/ui/reconciliation"), path
