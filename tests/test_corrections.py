"""Corrections: void and amend accepted events through a real server; rollups of every
aggregation equal a hand computation over the versions that count, and ``rebuild --check``
finds nothing to change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODES, Api, Server, build_api, make_key, mode_api, start_server
from test_billing_api import PLAN, calls, get, invoice, lines, move_to, ok, post, run, setup_billing, subscribe
from test_billing_api import ev as bev

BATCH = {"Content-Type": "application/cloudevents-batch+json"}
AGGREGATIONS = ("SUM", "COUNT", "AVG", "MIN", "MAX", "LATEST", "UNIQUE_COUNT")


def ev(id_: str, subject: str, time: str, v: str, user: str, region: str = "eu") -> dict[str, Any]:
    data = {"v": v, "user": user, "region": region}
    return {
        "specversion": "1.0",
        "id": id_,
        "source": "s",
        "type": "job",
        "subject": subject,
        "time": time,
        "data": data,
    }


_BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
DAY_START = _BASE.replace(hour=0).strftime("%Y-%m-%dT%H:%M:%SZ")
DAY_END = (_BASE.replace(hour=0) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
HOURS = [(_BASE + timedelta(hours=h)).strftime("%Y-%m-%dT%H") for h in range(3)]


def at(hour: int, minute: int) -> str:
    return f"{HOURS[hour]}:{minute:02d}:00Z"


EVENTS = [
    ev("e1", "acme", at(0, 1), "5", "u1"),
    ev("e2", "acme", at(0, 2), "9", "u2"),  # the MAX, voided below
    ev("e3", "acme", at(0, 40), "1", "u3"),  # the MIN, amended below
    ev("e4", "acme", at(0, 50), "7", "u1"),  # the LATEST of the first hour, amended into the third
    ev("e5", "acme", at(1, 10), "4", "u4"),
    ev("e6", "beta", at(0, 5), "3", "u5"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("corrections") / "data")
    yield s
    s.stop()


def client(s: Server) -> httpx.Client:
    return httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}, timeout=30)


def expected(events: list[dict[str, Any]], aggregation: str, subject: str, hour: str) -> Decimal | None:
    mine = [e for e in events if e["subject"] == subject and e["time"].startswith(hour)]
    values = [Decimal(e["data"]["v"]) for e in mine]
    if not mine:
        return None
    return {
        "SUM": lambda: sum(values, Decimal(0)),
        "COUNT": lambda: Decimal(len(mine)),
        "AVG": lambda: sum(values, Decimal(0)) / len(values),
        "MIN": lambda: min(values),
        "MAX": lambda: max(values),
        "LATEST": lambda: Decimal(max(mine, key=lambda e: e["time"])["data"]["v"]),
        "UNIQUE_COUNT": lambda: Decimal(len({e["data"]["user"] for e in mine})),
    }[aggregation]()


def values(c: httpx.Client, meter: str, subject: str) -> dict[str, Decimal]:
    r = c.get(
        f"/api/v1/meters/{meter}/query",
        params={"from": DAY_START, "to": DAY_END, "windowSize": "HOUR", "subject": subject},
    )
    assert r.status_code == 200, r.text
    return {row["windowStart"][:13]: Decimal(str(row["value"])) for row in r.json()["data"]}


def cli(s: Server, *args: str, status: int = 0, columns: int | None = None) -> str:
    env = {**os.environ, "METERLINE_URL": s.url, "METERLINE_API_KEY": s.key}
    if columns is not None:
        env["COLUMNS"] = str(columns)  # wide enough that no table cell is wrapped
    out = subprocess.run([sys.executable, "-m", "meterline.cli.main", *args], capture_output=True, text=True, env=env)
    assert out.returncode == status, out.stdout + out.stderr
    return out.stdout + out.stderr


def check_all(c: httpx.Client, events: list[dict[str, Any]]) -> None:
    for aggregation in AGGREGATIONS:
        for subject in ("acme", "beta"):
            got = values(c, f"m_{aggregation.lower()}", subject)
            for hour in HOURS:
                want = expected(events, aggregation, subject, hour)
                assert got.get(hour) == want, (aggregation, subject, hour, got)


def test_void_and_amend_move_every_aggregation_and_rebuild_agrees(served: Server) -> None:
    with client(served) as c:
        for aggregation in AGGREGATIONS:
            prop = "$.user" if aggregation == "UNIQUE_COUNT" else "$.v"
            spec: dict[str, Any] = {"slug": f"m_{aggregation.lower()}", "eventType": "job", "aggregation": aggregation}
            if aggregation != "COUNT":
                spec["valueProperty"] = prop
            spec["groupBy"] = {"region": "$.region"}
            assert c.post("/api/v1/meters", json=spec).status_code == 201
        r = c.post("/api/v1/events", json=EVENTS, headers=BATCH)
        assert r.status_code in (200, 202, 204), r.text
        check_all(c, EVENTS)

        voided = cli(served, "events", "void", "e2", "--source", "s", "--reason", "test traffic", "--json")
        assert json.loads(voided)["voided"] is True
        amended = {**EVENTS[2], "data": {"v": "2", "user": "u9", "region": "us"}}
        r = c.post("/api/v1/events/e3/amend", json={"source": "s", "reason": "wrong value", "event": amended})
        assert r.status_code == 201, r.text
        moved = {**EVENTS[3], "time": at(2, 30), "data": {"v": "8", "user": "u1", "region": "eu"}}
        r = c.post("/api/v1/events/e4/amend", json={"source": "s", "reason": "clock skew", "event": moved})
        assert r.status_code == 201, r.text
        again = {**moved, "data": {"v": "6", "user": "u2", "region": "eu"}}
        file = served.data_dir.parent / "amend.json"
        file.write_text(json.dumps(again))
        cli(served, "events", "amend", "e4", str(file), "--source", "s", "--reason", "second fix")

        now = [EVENTS[0], amended, again, EVENTS[4], EVENTS[5]]
        check_all(c, now)

        history = c.get("/api/v1/events/e4", params={"source": "s"}).json()
        assert [v["action"] for v in history["history"]] == ["ingest", "amend", "amend"]
        assert [v.get("reason") for v in history["history"]] == [None, "clock skew", "second fix"]
        assert history["event"]["data"] == {"v": "6", "user": "u2", "region": "eu"}
        assert history["history"][1]["actor"]  # the admin key's id
        # a retry of a corrected key is a duplicate: never counted again
        r = c.post(
            "/api/v1/events",
            json=[EVENTS[1], EVENTS[3]],
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
        assert r.status_code in (200, 202, 204), r.text
        check_all(c, now)
        assert "is voided" in cli(served, "events", "void", "e2", "--source", "s", "--reason", "x", status=2)
        assert "voided" in cli(served, "events", "history", "e2", "--source", "s")
        shown = cli(served, "events", "history", "e4", "--source", "s", columns=300).splitlines()
        versions = [line for line in shown if " ingest " in line or " amend " in line]
        assert len(versions) == 3 and '{"v":"6","user":"u2","region":"eu"}' in versions[-1], shown  # what it changed
        listed = c.get("/api/v1/events", params={"limit": "100"}).json()
        assert sorted(e["event"]["id"] for e in listed) == ["e1", "e2", "e3", "e4", "e5", "e6"]
    served.stop()
    out = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "rebuild", "--check", "--data-dir", str(served.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "identical" in out.stdout.lower(), out.stdout
    # the corrections are ledger entries like any other: linked into the hash chain
    out = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "verify", "--data-dir", str(served.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -- invoiced periods, entitlement values, errors (in-process app: billing needs a frozen clock) --


@pytest.fixture(params=MODES)
def bapi(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app in each storage mode: corrections hold the same in both."""
    yield from mode_api(request, tmp_path, billing={"scheduler_enabled": False})


def correct(api: Api, event_id: str, action: str, status: int = 201, **body: Any) -> Any:
    r = api.client.post(f"/api/v1/events/{event_id}/{action}", json={"source": "t", **body}, headers=api.headers())
    assert r.status_code == status, r.text
    return r.json()


def entitle(api: Api) -> None:
    f = post(api, "/api/v1/features", {"key": "calls", "name": "Calls", "meterSlug": "api_calls"})
    assert f.status_code == 201, f.text
    body = {"type": "metered", "featureKey": "calls", "issueAfterReset": 5000, "usagePeriod": {"interval": "MONTH"},
            "measureUsageFrom": "CURRENT_PERIOD_START"}  # fmt: skip
    assert post(api, "/api/v1/customers/acme/entitlements", body).status_code == 201


def usage_now(api: Api) -> Any:
    return ok(get(api, "/api/v1/customers/acme/entitlements/calls/value"))["usage"]


def test_corrections_in_open_and_invoiced_periods_land_exactly(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    subscribe(api)
    entitle(api)
    calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 1500)
    calls(api, "c2", "acme-eu", "2026-03-01T11:00:00Z", 500)
    calls(api, "c3", "acme", "2026-03-01T11:30:00Z", 700)
    assert usage_now(api) == 2700
    move_to(api, "2026-04-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000001"]
    march = get(api, "/api/v1/invoices/INV-000001")
    assert lines(march.json())[1] == ("usage", "API calls", "17.00", "2700", None)

    move_to(api, "2026-04-03T00:00:00Z")
    calls(api, "a1", "acme", "2026-04-02T09:00:00Z", 300)
    calls(api, "a2", "acme", "2026-04-02T09:10:00Z", 200)
    assert usage_now(api) == 500
    # the open period: the entitlement's usage moves at once
    correct(api, "a2", "void", reason="duplicate job")
    assert usage_now(api) == 300
    correct(api, "a1", "amend", reason="wrong count", event=bev("a1", "acme", "2026-04-02T09:00:00Z", calls=250))
    assert usage_now(api) == 250
    # the invoiced period: March's invoice never changes, the next one carries the difference
    c3 = correct(api, "c3", "void", reason="test traffic")["correction"]
    amended = bev("c2", "acme-eu", "2026-03-01T11:00:00Z", calls=900)
    c2 = correct(api, "c2", "amend", reason="undercounted", event=amended)
    calls(api, "late", "acme", "2026-03-31T23:00:00Z", 0)  # a late event is no correction: not cited
    assert get(api, "/api/v1/invoices/INV-000001").content == march.content
    assert usage_now(api) == 250  # March corrections do not touch April's counter

    move_to(api, "2026-05-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000002"]
    april = invoice(api, "INV-000002")
    # March now: 1500 + 900 = 2400 calls, 14.00 instead of 17.00
    assert lines(april) == [
        ("flat", "Platform fee", "49.00", None, None),
        ("usage", "API calls", "0.00", "250", None),
        ("usage", "Storage", "0.00", "0", None),
        ("adjustment", "Adjustment: API calls", "-3.00", "-300", "INV-000001"),
    ]
    assert (april["subtotal"], april["adjustments"], april["total"]) == ("49.00", "-3.00", "46.00")
    assert april["lines"][-1]["corrections"] == [c3, c2["correction"]]  # the line cites them
    assert all("corrections" not in ln for ln in april["lines"][:-1])
    html = api.client.get("/api/v1/invoices/INV-000002/html", headers=api.headers()).text
    assert f"corrections {c3}, {c2['correction']}" in html
    assert get(api, "/api/v1/invoices/INV-000001").content == march.content
    move_to(api, "2026-06-01T00:01:00Z")
    may = invoice(api, run(api)["created"][0])
    assert [ln["kind"] for ln in may["lines"]] == ["flat", "usage", "usage"]  # adjusted once only


def test_correction_errors_are_problems_with_stable_codes(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 10)
    assert correct(api, "nope", "void", 404, reason="x")["code"] == "event_not_found"
    assert correct(api, "c1", "void", 400, reason=" ")["code"] == "invalid_correction"
    assert correct(api, "c1", "amend", 400, reason="x")["code"] == "invalid_correction"  # no event
    assert correct(api, "c1", "void", 400, reason="x", event={"type": "t"})["code"] == "invalid_correction"
    moved = bev("c1", "acme", "2026-03-01T10:00:00Z", calls=10)
    assert correct(api, "c1", "amend", 400, reason="x", event={**moved, "id": "other"})["code"] == "invalid_correction"
    unreadable = bev("c1", "acme", "2026-03-01T10:00:00Z", calls="many")
    problem = correct(api, "c1", "amend", 400, reason="x", event=unreadable)
    assert (problem["code"], problem["reason"]) == ("amend_unreadable", "unreadable_value")
    no_type = {k: v for k, v in moved.items() if k != "type"}
    assert correct(api, "c1", "amend", 400, reason="x", event=no_type)["code"] == "invalid_event"
    r = api.client.post("/api/v1/events/c1/void", content=b"{", headers=api.headers())
    assert r.status_code == 400 and r.json()["code"] in ("invalid_correction", "invalid_json")
    reader = api.new_key(["read"])
    r = api.client.post("/api/v1/events/c1/void", json={"source": "t", "reason": "x"}, headers=api.headers(reader))
    assert r.status_code == 403
    correct(api, "c1", "void", reason="gone")
    assert correct(api, "c1", "void", 409, reason="again")["code"] == "event_voided"
    assert correct(api, "c1", "amend", 409, reason="again", event=moved)["code"] == "event_voided"
    assert get(api, "/api/v1/events/c1").status_code == 400  # the source is part of the key
    history = ok(get(api, "/api/v1/events/c1", source="t"))
    assert history["voided"] is True and history["event"] is None
    assert [(v["action"], v.get("reason")) for v in history["history"]] == [("ingest", None), ("void", "gone")]
    assert get(api, "/api/v1/events/nope", source="t").json()["code"] == "event_not_found"


def test_an_amend_to_a_subject_no_customer_owns_follows_the_unknown_subject_policy(bapi: Api) -> None:
    """Ingest would not count an event of an unowned subject under quarantine or reject, and a
    correction cannot be quarantined: an amend moving an event there is refused; keeping its
    own subject, or moving to an owned one, is not. Under accept (the default) it is allowed."""
    api = bapi
    setup_billing(api)
    calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 10)
    calls(api, "c2", "acme", "2026-03-01T10:05:00Z", 20)
    correct(api, "c1", "amend", reason="moved", event=bev("c1", "stranger", "2026-03-01T10:00:00Z", calls=10))
    for policy in ("reject", "quarantine"):
        ok(api.client.put("/api/v1/settings", json={"unknownSubjects": policy}, headers=api.headers()))
        moved = bev("c2", "stranger-2", "2026-03-01T10:05:00Z", calls=20)
        problem = correct(api, "c2", "amend", 400, reason="moved", event=moved)
        assert problem["code"] == "amend_unknown_subject" and "'stranger-2'" in problem["detail"], problem
        assert problem["detail"].endswith(f"policy is {policy}: create the customer first"), problem
        history = ok(get(api, "/api/v1/events/c2", source="t"))
        assert [v["action"] for v in history["history"]] == ["ingest"] and history["event"]["subject"] == "acme"
    # its own subject (also an unowned one it already had), or a subject a customer owns
    correct(api, "c1", "amend", reason="count", event=bev("c1", "stranger", "2026-03-01T10:00:00Z", calls=11))
    correct(api, "c2", "amend", reason="count", event=bev("c2", "acme", "2026-03-01T10:05:00Z", calls=21))
    correct(api, "c1", "amend", reason="back", event=bev("c1", "acme-eu", "2026-03-01T10:00:00Z", calls=12))
    window = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}
    usage = ok(get(api, "/api/v1/meters/api_calls/query", **window, groupBy="subject"))["data"]
    assert sorted((r["subject"], r["value"]) for r in usage if r["value"]) == [("acme", 21), ("acme-eu", 12)]


def test_a_backfill_for_an_invoiced_period_becomes_an_adjustment(tmp_path: Path) -> None:
    for api in build_api(tmp_path, billing={"scheduler_enabled": False}, ingest={"late_arrival_window": "P7D"}):
        setup_billing(api)
        subscribe(api)
        calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 1500)
        move_to(api, "2026-04-01T00:01:00Z")
        assert run(api)["created"] == ["INV-000001"]
        march = get(api, "/api/v1/invoices/INV-000001")
        move_to(api, "2026-04-20T00:00:00Z")
        old = [bev("b1", "acme", "2026-03-02T10:00:00Z", calls=400), bev("c1", "acme", "2026-03-01T10:00:00Z", calls=1)]
        assert api.post_events(old[:1]).json()["rejected"][0]["reason"] == "time_too_old"  # ingest refuses it
        batch = {"Content-Type": "application/cloudevents-batch+json"}
        r = api.client.post("/api/v1/backfills", json=old, headers=api.headers(**batch))
        assert r.status_code == 200, r.text
        assert [(e["id"], e["status"]) for e in r.json()["events"]] == [("b1", "accepted"), ("c1", "duplicate")]
        again = api.client.post("/api/v1/backfills", json=old, headers=api.headers(**batch)).json()
        assert (again["accepted"], again["duplicates"]) == (0, 2)  # exactly once, as any ingest
        reader = make_key(api.data_dir, ["ingest", "read"])
        assert api.client.post("/api/v1/backfills", json=old, headers=api.headers(reader, **batch)).status_code == 403
        move_to(api, "2026-05-01T00:01:00Z")
        april = invoice(api, run(api)["created"][0])
        assert lines(april)[-1] == ("adjustment", "Adjustment: API calls", "4.00", "400", "INV-000001")
        assert "corrections" not in april["lines"][-1]  # a backfill is new usage, not a correction
        assert get(api, "/api/v1/invoices/INV-000001").content == march.content


def test_kill_9_while_correcting_loses_no_acknowledged_correction(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_server(data)
    keys = [f"k{i}" for i in range(120)]
    acked: list[str] = []
    try:
        with client(first) as c:
            for slug, aggregation in (("k_sum", "SUM"), ("k_max", "MAX")):
                spec = {"slug": slug, "eventType": "job", "aggregation": aggregation, "valueProperty": "$.v"}
                assert c.post("/api/v1/meters", json=spec).status_code == 201
            batch = [ev(k, "acme", at(0, i % 60), str(i + 1), "u") for i, k in enumerate(keys)]
            assert c.post("/api/v1/events", json=batch, headers=BATCH).status_code == 204

            def correct_all() -> None:
                for k in keys:
                    try:
                        r = c.post(f"/api/v1/events/{k}/void", json={"source": "s", "reason": "crash test"})
                    except httpx.HTTPError:
                        return
                    if r.status_code != 201:
                        return
                    acked.append(k)

            worker = threading.Thread(target=correct_all)
            worker.start()
            while len(acked) < 20 and worker.is_alive():
                time.sleep(0.01)
            first.process.kill()  # SIGKILL, mid-stream
            worker.join()
    finally:
        first.stop()
    assert 20 <= len(acked) < len(keys)
    second = start_server(data)
    try:
        with client(second) as c:
            voided = {k for k in keys if c.get(f"/api/v1/events/{k}", params={"source": "s"}).json()["voided"]}
            assert set(acked) <= voided  # acknowledged means durable
            assert len(voided) <= len(acked) + 1  # at most the one in flight when the process died
            left = [i + 1 for i, k in enumerate(keys) if k not in voided]
            params = {"from": DAY_START, "to": DAY_END}
            total = c.get("/api/v1/meters/k_sum/query", params=params).json()["data"]
            assert Decimal(str(total[0]["value"])) == sum(left)
            high = c.get("/api/v1/meters/k_max/query", params=params).json()["data"]
            assert Decimal(str(high[0]["value"])) == max(left)
    finally:
        second.stop()
    out = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "rebuild", "--check", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "identical" in out.stdout.lower(), out.stdout + out.stderr


def test_a_meter_created_after_voids_with_no_event_after_it_counts_none_of_them(tmp_path: Path) -> None:
    """Its backfill recomputes the voided keys' hours with the meter it is filling, although no
    live batch reloaded the writer's meters since the meter was created."""
    for api in build_api(tmp_path, ingest={"late_arrival_window": "P7D"}):
        at = datetime.fromtimestamp(api.clock.now_us() / 1e6 - 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert api.post_events([ev("v1", "acme", at, "5", "u1"), ev("v2", "acme", at, "7", "u2")]).status_code == 204
        for id_ in ("v1", "v2"):
            r = post(api, f"/api/v1/events/{id_}/void", {"source": "s", "reason": "test traffic"})
            assert r.status_code == 201, r.text
        spec = {"slug": "late_sum", "eventType": "job", "aggregation": "SUM", "valueProperty": "$.v"}
        assert api.create_meter(**spec).status_code == 201
        backend = api.client.app.state.system.backend  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        while backend.meters.pending_backfill():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ok(api.query("late_sum"))["data"] == []


def test_a_scale_node_corrects_open_and_invoiced_periods_exactly(scale_site: Any, scale_node: Server) -> None:
    """Through a real scale-mode API node (``meterline serve``, real clock) and sink worker: last
    month invoiced, then a void and an amend there leave its invoice byte-identical and put the
    difference, citing both, on the next invoice's preview; a void and an amend in the open
    period move the entitlement's value at once."""
    key = scale_site.key(f"n{uuid.uuid4().hex[:10]}")
    now = datetime.now(UTC)
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last = (this_month - timedelta(days=1)).replace(day=1)
    at = last.strftime("%Y-%m-") + "%sT%s:00:00Z"
    with httpx.Client(base_url=scale_node.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        spec = {"slug": "api_calls", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.calls",
                "groupBy": {"region": "$.region"}}  # fmt: skip
        assert c.post("/api/v1/meters", json=spec).status_code == 201
        spec = {"slug": "storage_gb", "eventType": "storage", "aggregation": "SUM", "valueProperty": "$.gb"}
        assert c.post("/api/v1/meters", json=spec).status_code == 201
        body = {"key": "acme", "name": "Acme Inc", "subjectKeys": ["acme", "acme-eu"], "timezone": "UTC"}
        assert c.post("/api/v1/customers", json=body).status_code == 201
        assert c.post("/api/v1/billing/plans", json=PLAN).status_code == 201
        assert c.post("/api/v1/billing/plans/pro/versions/1/publish", json={}).status_code == 200
        start = last.strftime("%Y-%m-%dT%H:%M:%SZ")
        sub = {"customer": "acme", "plan": "pro", "start": start}
        assert c.post("/api/v1/billing/subscriptions", json=sub).status_code == 201, start
        backfill = [bev("c1", "acme", at % ("01", "10"), calls=1500, region="eu"),
                    bev("c2", "acme-eu", at % ("01", "11"), calls=500, region="eu"),
                    bev("c3", "acme", at % ("02", "11"), calls=700, region="eu")]  # fmt: skip
        r = c.post("/api/v1/backfills", json=backfill)
        assert r.status_code == 200 and {e["status"] for e in r.json()["events"]} == {"accepted"}, r.text
        created = c.post("/api/v1/billing/runs", json={}).json()["created"]
        assert len(created) == 1, created
        number = created[0]
        finalized = c.get(f"/api/v1/invoices/{number}")
        assert lines(finalized.json())[1] == ("usage", "API calls", "17.00", "2700", None)
        # the invoiced period: corrected, its invoice unchanged, the next one carries the difference
        void = c.post("/api/v1/events/c3/void", json={"source": "t", "reason": "test traffic"})
        assert void.status_code == 201, void.text
        amended = bev("c2", "acme-eu", at % ("01", "11"), calls=900, region="eu")
        amend = c.post("/api/v1/events/c2/amend", json={"source": "t", "reason": "undercounted", "event": amended})
        assert amend.status_code == 201, amend.text
        assert c.get(f"/api/v1/invoices/{number}").content == finalized.content
        preview = c.get("/api/v1/customers/acme/invoice-preview")
        assert preview.status_code == 200, preview.text
        line = preview.json()["invoices"][0]["lines"][-1]
        got = (line["kind"], line["name"], line["amount"], line["quantity"], line["references"])
        assert got == ("adjustment", "Adjustment: API calls", "-3.00", "-300", number), line
        assert line["corrections"] == [void.json()["correction"], amend.json()["correction"]], line
        # the open period: the entitlement's value moves at once
        f = {"key": "calls", "name": "Calls", "meterSlug": "api_calls"}
        assert c.post("/api/v1/features", json=f).status_code == 201
        ent = {"type": "metered", "featureKey": "calls", "issueAfterReset": 5000, "usagePeriod": {"interval": "MONTH"},
               "measureUsageFrom": "CURRENT_PERIOD_START"}  # fmt: skip
        assert c.post("/api/v1/customers/acme/entitlements", json=ent).status_code == 201
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        sent = [bev("a1", "acme", stamp, calls=300, region="eu"), bev("a2", "acme", stamp, calls=200, region="eu")]
        assert c.post("/api/v1/events", json=sent).status_code == 204

        def usage() -> Any:
            r = c.get("/api/v1/customers/acme/entitlements/calls/value")
            assert r.status_code == 200, r.text
            return r.json()["usage"]

        assert usage() == 500
        assert c.post("/api/v1/events/a2/void", json={"source": "t", "reason": "duplicate"}).status_code == 201
        assert usage() == 300
        a1 = {"source": "t", "reason": "wrong count", "event": bev("a1", "acme", stamp, calls=250, region="eu")}
        assert c.post("/api/v1/events/a1/amend", json=a1).status_code == 201
        assert usage() == 250
        assert c.get(f"/api/v1/invoices/{number}").content == finalized.content
