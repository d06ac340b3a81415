"""``meterline reconcile``: on seeded data with rejects, quarantine, voids, amends and late events
every difference has a cause; a rollup row edited in the SQLite file is reported as unexplained,
in the API, the metric and the CLI's exit status."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Api, build_api, build_scale_api, start_server
from test_billing_api import calls, ev, get, move_to, ok, post, run, setup_billing, subscribe


@pytest.fixture
def bapi(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path, billing={"scheduler_enabled": False}, reconcile={"interval": None})


def reconcile(api: Api, **params: str) -> Any:
    return ok(get(api, "/api/v1/reconciliation", **{"from": "2026-03-01", "to": "2026-03-31", **params}))


def differences(report: dict[str, Any], meter: str = "api_calls") -> list[tuple[str, str, int]]:
    return [(d["stage"], d["cause"], d["events"]) for d in report["differences"] if d["meter"] == meter]


def plant(data_dir: Path, meter: str) -> None:
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

    plant(api.data_dir, "api_calls")
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
    plant(data, "n")
    server = start_server(data)
    env["METERLINE_API_KEY"], env["METERLINE_URL"] = server.key, server.url
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "unexplained" in out.stdout and "BEYOND TOLERANCE" in out.stdout
    finally:
        server.stop()


def test_scale_mode_answers_not_supported_for_reconciliation(scale_site: Any, tmp_path: Path) -> None:
    for api in build_scale_api(scale_site, tmp_path):
        got = api.client.get("/api/v1/reconciliation", headers=api.headers())
        assert got.status_code == 501 and got.json()["code"] == "not_supported", got.text
