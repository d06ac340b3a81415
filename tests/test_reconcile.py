"""``meterline reconcile``, in both modes: on seeded data with rejects, quarantine, voids, amends
and late events every difference has a cause; a rollup row edited by hand (in the SQLite file, or
a row inserted into ClickHouse's rollups) is reported as unexplained, in the API, the metric and
the CLI's exit status."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODES, Api, Server, mode_api, start_server
from scale_site import Site
from test_billing_api import calls, ev, get, move_to, ok, post, run, setup_billing, subscribe

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.schema import ROLLUPS
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.meters import PgMeters
from meterline.config import Config


@pytest.fixture(params=MODES)
def bapi(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    yield from mode_api(request, tmp_path, billing={"scheduler_enabled": False}, reconcile={"interval": None})


def reconcile(api: Api, **params: str) -> Any:
    return ok(get(api, "/api/v1/reconciliation", **{"from": "2026-03-01", "to": "2026-03-31", **params}))


def differences(report: dict[str, Any], meter: str = "api_calls") -> list[tuple[str, str, int]]:
    return [(d["stage"], d["cause"], d["events"]) for d in report["differences"] if d["meter"] == meter]


def plant(api: Api, meter: str) -> None:
    """One event more in one quarter hour of the meter's rollups, edited by hand."""
    if api.config.storage.engine == "scale":
        plant_clickhouse(api.config, reconcile(api)["namespace"], meter)
    else:
        plant_sqlite(api.data_dir, meter)


def meter_key(config: Config, namespace: str, slug: str) -> int:
    db = PgDatabase(config.postgres.dsn)
    try:
        return PgMeters(db, lambda: 0).get(namespace, slug).key
    finally:
        db.close()


def plant_clickhouse(
    config: Config,
    namespace: str,
    meter: str,
    *,
    at: int | None = None,
    subject: str = "",
    count: int = 1,
    total: int = 0,
) -> None:
    """Insert into ClickHouse's rollups ``count`` events and ``total`` more in one quarter hour
    of the meter (the first it has, or the one holding ``at``, epoch seconds), of a subject
    (``subject`` if given) and group it has there, at every bucket size, as a doubled insert or
    a bug would."""
    key = meter_key(config, namespace, meter)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    try:
        where = "" if at is None else f" AND bucket = {at - at % 900}"
        where += " AND subject = {s:String}" if subject else ""
        subject, bucket, group_key = conn.rows(
            f"SELECT subject, bucket, group_key FROM usage_rollups WHERE meter = {{m:UInt64}} AND level = 900{where}"
            " ORDER BY bucket, subject LIMIT 1",
            {"m": key, "s": subject},
        )[0]
        extra = Decimal(total)
        rows = [
            [key, level, subject, bucket - bucket % level, group_key, count, extra, extra, extra, (0, 0, extra)]
            for level in (60, 900, 3600)
        ]
        conn.insert("usage_rollups", ROLLUPS, rows, f"planted:{key}:{bucket}:{count}:{total}")
    finally:
        conn.close()


def plant_sqlite(data_dir: Path, meter: str) -> None:
    """Edit one quarter hour by hand, in the rollups and in the meter-wide summary kept beside
    them alike: the derived tables now hold an event the ledger does not."""
    conn = sqlite3.connect(data_dir / "meterline.db")
    with conn:
        key, subject, bucket, group_key = conn.execute(
            "SELECT meter, subject, bucket, group_key FROM rollups WHERE level = 900"
            " AND meter = (SELECT key FROM meters WHERE slug = ? AND deleted_us IS NULL) LIMIT 1",
            (meter,),
        ).fetchone()
        rows = conn.execute(
            "UPDATE rollups SET cnt = cnt + 1 WHERE (meter, level, subject, bucket, group_key) = (?, 900, ?, ?, ?)",
            (key, subject, bucket, group_key),
        ).rowcount
        rows += conn.execute(
            "UPDATE summaries SET cnt = cnt + 1 WHERE meter = ? AND level = 900 AND subject = '' AND bucket = ?",
            (key, bucket),
        ).rowcount
    conn.close()
    assert rows == 2


def test_every_difference_on_seeded_data_has_a_cause(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    subscribe(api)
    assert (
        api.client.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}, headers=api.headers()).status_code
        == 200
    )
    calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 1500)
    calls(api, "c2", "acme-eu", "2026-03-01T11:00:00Z", 500)
    calls(api, "c3", "acme", "2026-03-01T11:30:00Z", 700)
    assert api.post_events([ev("q1", "stranger", "2026-03-01T10:00:00Z", calls=5)]).status_code == 204  # held
    assert api.post_events([ev("r1", "acme", "2026-03-01T10:00:00Z", calls="many")]).status_code == 400
    void = {"source": "t", "reason": "test traffic"}
    assert post(api, "/api/v1/events/c3/void", void).status_code == 201
    moved = {"source": "t", "reason": "wrong day", "event": ev("c2", "acme-eu", "2026-03-01T09:00:00Z", calls=900)}
    assert post(api, "/api/v1/events/c2/amend", moved).status_code == 201
    report = reconcile(api)
    assert report["unexplained"] == 0 and report["withinTolerance"] is True
    assert differences(report) == [
        ("received->accepted", "rejected:unreadable_value", 1),
        ("received->accepted", "quarantined", 1),
        ("accepted->metered", "voided", 1),
        ("metered->billed", "not_invoiced", 2),
    ]
    line = next(ln for ln in report["lines"] if ln["meter"] == "api_calls")
    assert (line["received"], line["accepted"], line["metered"], line["expected"]) == (5, 3, 2, 2)

    move_to(api, "2026-04-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000001"]
    move_to(api, "2026-04-01T00:05:00Z")
    calls(api, "late", "acme", "2026-03-31T23:00:00Z", 100)  # after March was finalized
    assert post(api, "/api/v1/events/c1/void", void).status_code == 201  # and a void after it
    report = reconcile(api)
    assert report["unexplained"] == 0
    assert differences(report) == [
        ("received->accepted", "rejected:unreadable_value", 1),
        ("received->accepted", "quarantined", 1),
        ("accepted->metered", "voided", 2),
        ("metered->billed", "late_adjustment_pending", 2),
    ]
    move_to(api, "2026-05-01T00:01:00Z")
    assert len(run(api)["created"]) == 1  # April's invoice carries the adjustment
    assert ("metered->billed", "late_adjusted", 2) in differences(reconcile(api))

    plant(api, "api_calls")
    report = reconcile(api)
    assert report["unexplained"] == 1 and report["withinTolerance"] is False
    assert ("accepted->metered", "unexplained", 1) in differences(report)
    assert reconcile(api, tolerance="1")["withinTolerance"] is True
    metrics = api.client.get("/metrics").text
    assert "meterline_reconciliation_unexplained_events 1.0" in metrics


def test_the_dashboard_shows_the_metered_counts_reconcile_compares(bapi: Api) -> None:
    """One service, one answer: for a UNIQUE_COUNT meter the dashboard's metered column shows
    the distinct values ``reconcile`` compares (not 0), and for a COUNT meter its events."""
    api = bapi
    for slug, aggregation in (("n", "COUNT"), ("who", "UNIQUE_COUNT")):
        spec = {"slug": slug, "eventType": "job", "aggregation": aggregation}
        if aggregation == "UNIQUE_COUNT":
            spec["valueProperty"] = "$.user"
        assert post(api, "/api/v1/meters", spec).status_code == 201
    batch = [ev(f"j{i}", "acme", f"2026-03-01T10:0{i}:00Z", "job", user=f"u{i % 3}") for i in range(7)]
    batch.append(ev("k0", "globex", "2026-03-01T10:20:00Z", "job", user="u0"))
    assert api.post_events(batch).status_code == 204
    assert post(api, "/api/v1/events/j1/void", {"source": "t", "reason": "x"}).status_code == 201
    report = reconcile(api)
    assert report["unexplained"] == 0, report["differences"]
    lines = {ln["meter"]: ln for ln in report["lines"]}
    # acme's u0, u1 (j4 is u1 again: j1 voided), u2 and globex's u0 in quarter 10:00 and 10:15
    assert (lines["who"]["metered"], lines["who"]["expected"]) == (4, 4)
    assert (lines["n"]["accepted"], lines["n"]["metered"]) == (8, 7)
    page = signed_in_page(api, "/ui/reconciliation?from=2026-03-01&to=2026-03-31")
    for slug in ("n", "who"):
        table = page.split(f'<table data-meter="{slug}">', 1)[1].split("</table>", 1)[0]
        shown = re.search(r"data-metered>([^<]*)<", table)
        assert shown is not None and shown.group(1).strip() == str(lines[slug]["metered"]), slug
    assert "distinct values" in page.split('<table data-meter="who">', 1)[1].split("</section>", 1)[0]
    received = page.split('id="received"', 1)[1].split("</table>", 1)[0]  # two meters of one type: counted once
    assert re.findall(r'<td class="n">([^<]*)</td>', received) == ["8"]
    position = re.search(r'data-as-of-position="(\d+)"', page)
    assert position is not None and int(position.group(1)) == report["asOfPosition"]


def signed_in_page(api: Api, path: str) -> str:
    """``path`` of the dashboard, signed in through its form with the test's admin key."""
    form = api.client.get("/ui/sign-in").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    signed = api.client.post(
        "/ui/sign-in", data={"csrf": token.group(1), "key": api.key, "next": path}, follow_redirects=False
    )
    assert signed.status_code == 303, signed.text
    page = api.client.get(path)
    assert page.status_code == 200, page.text
    return page.text


def test_cli_reconcile_exits_non_zero_on_a_planted_difference(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    hour = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:05:00Z")
    env = {**os.environ, "METERLINE_URL": server.url, "METERLINE_API_KEY": server.key}
    cmd = [sys.executable, "-m", "meterline.cli.main", "reconcile", "--grain", "day"]
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}) as c:
            for slug, aggregation in (("n", "COUNT"), ("who", "UNIQUE_COUNT")):
                spec = {"slug": slug, "eventType": "job", "aggregation": aggregation}
                if aggregation == "UNIQUE_COUNT":
                    spec["valueProperty"] = "$.user"
                assert c.post("/api/v1/meters", json=spec).status_code == 201
            batch = [
                {"specversion": "1.0", "id": f"j{i}", "source": "t", "type": "job", "subject": "acme", "time": hour,
                 "data": {"user": f"u{i % 3}"}}
                for i in range(6)
            ]  # fmt: skip
            assert c.post("/api/v1/events", json=batch).status_code == 204
            assert c.post("/api/v1/events/j0/void", json={"source": "t", "reason": "x"}).status_code == 201
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "voided" in out.stdout and "within tolerance" in out.stdout
    finally:
        server.stop()
    plant_sqlite(data, "n")
    server = start_server(data)
    env["METERLINE_API_KEY"], env["METERLINE_URL"] = server.key, server.url
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "unexplained" in out.stdout and "BEYOND TOLERANCE" in out.stdout
    finally:
        server.stop()


@pytest.mark.parametrize("table", ["rollups", "summaries"])
def test_cli_reconcile_names_rows_of_one_table_edited_alone(tmp_path: Path, table: str) -> None:
    """One subject's quarter-hour, hour and minute rollups edited by hand (what that subject's
    queries, invoices and entitlements read) while the meter-wide summaries are left as they
    were, or the reverse: either is an unexplained event, though the summaries alone (or the
    rollups alone) still agree with the ledger."""
    data = tmp_path / "data"
    server = start_server(data)
    hour = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:05:00Z")
    env = {**os.environ, "METERLINE_URL": server.url, "METERLINE_API_KEY": server.key}
    cmd = [sys.executable, "-m", "meterline.cli.main", "reconcile", "--grain", "day"]
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}) as c:
            spec = {"slug": "tokens", "eventType": "job", "aggregation": "SUM", "valueProperty": "$.n"}
            assert c.post("/api/v1/meters", json=spec).status_code == 201
            batch = [
                {"specversion": "1.0", "id": f"j{i}", "source": "t", "type": "job", "subject": f"s{i % 2}",
                 "time": hour, "data": {"n": i}}
                for i in range(4)
            ]  # fmt: skip
            assert c.post("/api/v1/events", json=batch).status_code == 204
            done = c.get("/api/v1/meters/tokens/query", params={"consistency": "strong"})
            assert done.status_code == 200 and done.json()["data"][0]["value"] == 6, done.text
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "within tolerance" in out.stdout, out.stdout + out.stderr
    finally:
        server.stop()
    conn = sqlite3.connect(data / "meterline.db")
    with conn:
        where = "subject = 's1'" if table == "rollups" else "subject = ''"
        edited = conn.execute(f"UPDATE {table} SET cnt = cnt + 1, total = total + 100 WHERE {where}").rowcount
    conn.close()
    assert edited >= 2  # every level of the hour
    server = start_server(data)
    env["METERLINE_API_KEY"], env["METERLINE_URL"] = server.key, server.url
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "unexplained" in out.stdout and "BEYOND TOLERANCE" in out.stdout
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}) as c:
            report = c.get("/api/v1/reconciliation", params={"grain": "day"}).json()
        found = [(d["stage"], d["cause"], d["events"]) for d in report["differences"]]
        assert ("accepted->metered", "unexplained", 1) in found, found
    finally:
        server.stop()


def test_cli_reconcile_at_scale_exits_non_zero_on_a_planted_difference(scale_site: Site, scale_node: Server) -> None:
    """The CLI against a real scale-mode API node (`meterline serve`) with a sink worker: within
    tolerance, then beyond it once a row is inserted into ClickHouse's rollups by hand."""
    namespace = f"n{uuid.uuid4().hex[:10]}"
    key = scale_site.key(namespace)
    hour = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:05:00Z")
    env = {**os.environ, "METERLINE_URL": scale_node.url, "METERLINE_API_KEY": key}
    cmd = [sys.executable, "-m", "meterline.cli.main", "reconcile", "--grain", "day"]
    with httpx.Client(base_url=scale_node.url, headers={"Authorization": f"Bearer {key}"}) as c:
        assert (
            c.post("/api/v1/meters", json={"slug": "n", "eventType": "job", "aggregation": "COUNT"}).status_code == 201
        )
        batch = [
            {"specversion": "1.0", "id": f"j{i}", "source": "t", "type": "job", "subject": "acme", "time": hour}
            for i in range(6)
        ]
        assert c.post("/api/v1/events", json=batch).status_code == 204
        assert c.post("/api/v1/events/j0/void", json={"source": "t", "reason": "x"}).status_code == 201
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "voided" in out.stdout and "within tolerance" in out.stdout
    plant_clickhouse(scale_site.config, namespace, "n")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "unexplained" in out.stdout and "BEYOND TOLERANCE" in out.stdout


@pytest.fixture(params=MODES)
def rapi(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    yield from mode_api(request, tmp_path, reconcile={"interval": None})


def test_gauge_readings_and_distinct_values_are_compared_as_the_rollups_hold_them(rapi: Api) -> None:
    """TIME_WEIGHTED_SUM rollups hold readings and UNIQUE_COUNT rollups distinct values: the
    replay expects exactly those, voided ones out (the replay expected no gauge readings, so
    every gauge meter reported its readings as unexplained)."""
    api = rapi
    for spec in (
        {"slug": "disk", "aggregation": "TIME_WEIGHTED_SUM", "valueProperty": "$.gb"},
        {"slug": "who", "aggregation": "UNIQUE_COUNT", "valueProperty": "$.user"},
    ):
        assert api.create_meter(eventType="disk", **spec).status_code == 201
    batch = [
        ev(f"d{i}", "acme", f"2026-03-01T10:{i * 7:02d}:00Z", "disk", gb=str(i), user=f"u{i % 2}") for i in range(5)
    ]
    assert api.post_events(batch).status_code == 204
    assert post(api, "/api/v1/events/d4/void", {"source": "t", "reason": "x"}).status_code == 201
    report = reconcile(api)
    assert report["unexplained"] == 0, report["differences"]
    lines = {(ln["meter"], ln["period"][:10]): ln for ln in report["lines"]}
    disk, who = lines[("disk", "2026-03-01")], lines[("who", "2026-03-01")]
    assert (disk["accepted"], disk["metered"], disk["expected"]) == (5, 4, 4)
    assert (who["metered"], who["expected"]) == (3, 3)  # u0 and u1 in 10:00-10:15, u1 in 10:15-10:30
    assert differences(report, "disk") == [("accepted->metered", "voided", 1), ("metered->billed", "not_invoiced", 4)]


def test_cli_reconcile_at_scale_explains_rejects_quarantine_corrections_and_late_events(
    scale_site: Site, scale_node: Server
) -> None:
    """The CLI against a real scale-mode API node and sink worker, on seeded data: a rejected
    event, a quarantined one, a void, an amend and a late event are each explained (exit 0);
    a row planted in ClickHouse's rollups is unexplained (exit 1)."""
    namespace = f"n{uuid.uuid4().hex[:10]}"
    key = scale_site.key(namespace)
    now = datetime.now(UTC)
    hour = (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:05:00Z")
    late = (now - timedelta(hours=5)).strftime("%Y-%m-%dT%H:10:00Z")  # an hour earlier events have passed
    env = {**os.environ, "METERLINE_URL": scale_node.url, "METERLINE_API_KEY": key}
    cmd = [sys.executable, "-m", "meterline.cli.main", "reconcile", "--grain", "day", "--json"]

    def job(id_: str, subject: str, at: str, n: object = 1) -> dict[str, Any]:
        return {"specversion": "1.0", "id": id_, "source": "t", "type": "job", "subject": subject, "time": at,
                "data": {"n": n}}  # fmt: skip

    with httpx.Client(base_url=scale_node.url, headers={"Authorization": f"Bearer {key}"}) as c:
        meter = {"slug": "n", "eventType": "job", "aggregation": "SUM", "valueProperty": "$.n"}
        assert c.post("/api/v1/meters", json=meter).status_code == 201
        assert c.post("/api/v1/customers", json={"key": "acme", "subjectKeys": ["acme"]}).status_code == 201
        assert c.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}).status_code == 200
        assert c.post("/api/v1/events", json=[job(f"j{i}", "acme", hour, i + 1) for i in range(4)]).status_code == 204
        assert c.post("/api/v1/events", json=[job("q1", "stranger", hour)]).status_code == 204  # held
        assert c.post("/api/v1/events", json=[job("r1", "acme", hour, "many")]).status_code == 400  # rejected
        assert c.post("/api/v1/events/j0/void", json={"source": "t", "reason": "x"}).status_code == 201
        amend = {"source": "t", "reason": "y", "event": job("j1", "acme", hour, 20)}
        assert c.post("/api/v1/events/j1/amend", json=amend).status_code == 201
        assert c.post("/api/v1/events", json=[job("l1", "acme", late, 7)]).status_code == 204  # late
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    causes: dict[tuple[str, str], int] = {}  # summed over days (the late event's may be the day before)
    for d in report["differences"]:
        if d["meter"] == "n":
            causes[(d["stage"], d["cause"])] = causes.get((d["stage"], d["cause"]), 0) + d["events"]
    assert causes == {
        ("received->accepted", "rejected:unreadable_value"): 1,
        ("received->accepted", "quarantined"): 1,
        ("accepted->metered", "voided"): 1,
        ("metered->billed", "not_invoiced"): 4,
    }, out.stdout
    lines = [ln for ln in report["lines"] if ln["meter"] == "n"]
    assert [sum(ln[k] for ln in lines) for k in ("received", "accepted", "metered")] == [7, 5, 4], lines
    assert report["unexplained"] == 0 and report["withinTolerance"] is True, out.stdout
    plant_clickhouse(scale_site.config, namespace, "n")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["unexplained"] == 1 and report["withinTolerance"] is False, out.stdout
