"""Erasure of a subject (GDPR right to erasure) through the app on a real SQLite file and through
a real server: no identifier or payload string of the subject is left in the database files
(``.db``, ``-wal``, ``-shm``, read raw, while running and after close), meter answers of every
aggregation and finalized invoices are unchanged, ``meterline verify`` passes, a resent erased
event is a duplicate, and the audit record says who, when, why and how much."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODES, Api, build_api, mode_api, start_server
from test_billing_api import PLAN as BILLING_PLAN
from test_billing_api import ev, get, move_to, ok, post, run, subscribe

from meterline.adapters.sqlite import erasure_hours
from meterline.adapters.sqlite.database import DB_FILE
from meterline.adapters.sqlite.schema import connect

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

SUBJECT = "zed.person-4471"
EMAIL = "zed.private@example.org"
IDS = [f"evt-zed-{i:04d}" for i in range(8)]
AGGREGATIONS = ("SUM", "COUNT", "AVG", "MIN", "MAX", "LATEST", "UNIQUE_COUNT")
PLAN: dict[str, Any] = {
    **BILLING_PLAN,
    "cards": [
        {"key": "api", "name": "API calls", "meter": "m_sum", "model": {"model": "per_unit", "unitPrice": "0.5"}}
    ],
}


def secrets_of_subject() -> list[bytes]:
    return [s.encode() for s in (SUBJECT, EMAIL, *IDS)]


def leaks(data_dir: Path) -> dict[str, list[str]]:
    """Which of the subject's strings each database file still holds, read as raw bytes."""
    out: dict[str, list[str]] = {}
    for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
        path = data_dir / name
        if path.exists():
            raw = path.read_bytes()
            found = [s.decode() for s in secrets_of_subject() if s in raw]
            if found:
                out[name] = found
    return out


def zed(i: int, time: str, calls: int, region: str = "eu") -> dict[str, Any]:
    return ev(IDS[i], SUBJECT, time, calls=calls, region=region, endpoint=f"/v1/e{calls % 3}", email=EMAIL)


def create_meters(api: Api) -> None:
    """A meter of each aggregation over the `request` events, grouped by region."""
    for agg in AGGREGATIONS:
        spec: dict[str, Any] = {"slug": f"m_{agg.lower()}", "eventType": "request", "aggregation": agg}
        if agg != "COUNT":
            spec["valueProperty"] = "$.endpoint" if agg == "UNIQUE_COUNT" else "$.calls"
        ok(api.create_meter(**spec, groupBy={"region": "$.region"}), 201)


def setup(api: Api) -> None:
    create_meters(api)
    body = {"key": "globex", "name": "Globex", "subjectKeys": ["globex-ops", SUBJECT]}
    ok(post(api, "/api/v1/customers", body), 201)
    ok(post(api, "/api/v1/billing/plans", PLAN), 201)
    ok(post(api, "/api/v1/billing/plans/pro/versions/1/publish"))
    subscribe(api, customer="globex")


def ingest(api: Api) -> None:
    events = [
        zed(0, "2026-03-01T10:00:00Z", 5),
        zed(1, "2026-03-01T10:20:00Z", 9, "us"),
        zed(2, "2026-03-02T11:00:00Z", 1),
        zed(3, "2026-03-02T11:30:00Z", 7),
        ev("ops-1", "globex-ops", "2026-03-01T10:10:00Z", calls=4, region="eu", endpoint="/v1/e1"),
        ev("ops-2", "globex-ops", "2026-03-02T11:40:00Z", calls=2, region="us", endpoint="/v1/e2"),
    ]
    r = api.post_events(events)
    assert r.status_code in (200, 202, 204), r.text
    # a rejected event of the subject: kept as a dead letter until the erasure
    bad = api.post_events([{**zed(4, "2026-03-02T12:00:00Z", 1), "data": {"calls": "many", "email": EMAIL}}])
    assert bad.status_code in (200, 202, 204, 207, 400), bad.text


def answers(api: Api) -> dict[str, Any]:
    """Every meter's answer per hour and region over March (no subject in them)."""
    out = {}
    for agg in AGGREGATIONS:
        params = [
            ("from", "2026-03-01T00:00:00Z"),
            ("to", "2026-04-01T00:00:00Z"),
            ("windowSize", "HOUR"),
            ("groupBy", "region"),
        ]
        body = ok(api.query(f"m_{agg.lower()}", params))
        out[agg] = body["data"]
        whole = ok(api.query(f"m_{agg.lower()}", [("from", "2026-03-01T00:00:00Z"), ("to", "2026-04-01T00:00:00Z")]))
        out[agg + "-total"] = whole["data"]
    return out


def backfill(api: Api, events: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """(status, conflict) of each event sent through the backfill path (always a full report)."""
    r = api.client.post(
        "/api/v1/backfills",
        content=json.dumps(events),
        headers=api.headers(**{"Content-Type": "application/cloudevents-batch+json"}),
    )
    return [(i["status"], i.get("conflict", False)) for i in ok(r)["events"]]


def verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(params=[2000, 1], ids=["hours-together", "hour-by-hour"])
def erased(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Api, dict[str, Any]]]:
    """An app whose subject was billed, then erased (its hours in one small writer task, or one
    task per hour); with what was seen before the erasure."""
    monkeypatch.setattr(erasure_hours, "CHUNK", request.param)
    yield from _erased(build_api(tmp_path, billing={"scheduler_enabled": False}), files=True)


@pytest.fixture(params=MODES)
def erased_in_mode(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Api, dict[str, Any]]]:
    """As ``erased``, in each storage mode (scale mode: the shared site's engines)."""
    yield from _erased(mode_api(request, tmp_path, billing={"scheduler_enabled": False}), files=False)


def _erased(gen: Iterator[Api], *, files: bool) -> Iterator[tuple[Api, dict[str, Any]]]:
    api = next(gen)
    move_to(api, "2026-03-03T00:00:00Z")
    setup(api)
    ingest(api)
    token = ok(post(api, "/api/v1/portal/tokens", {"subject": SUBJECT}))["token"]
    move_to(api, "2026-04-01T00:01:00Z")
    seen = answers(api)  # (scale mode: once the workers applied the events to the new meters)
    numbers = run(api)["created"]
    assert numbers, "the March invoice is finalized before the erasure"
    before = {
        "answers": seen,
        "invoices": {n: get(api, f"/api/v1/invoices/{n}").content for n in numbers},
        "html": {n: get(api, f"/api/v1/invoices/{n}/html").content for n in numbers},
        "token": token,
    }
    if files:
        assert leaks(api.data_dir), "the subject's strings are in the files before the erasure"
    r = post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR request #118"})
    before["record"] = ok(r, 201)
    try:
        yield api, before
    finally:
        gen.close()


def test_erasure_leaves_no_trace_in_the_files_and_keeps_totals_and_invoices(erased: tuple[Api, Any]) -> None:
    api, before = erased
    assert leaks(api.data_dir) == {}  # while the app runs
    assert answers(api) == before["answers"]
    for number, body in before["invoices"].items():
        assert get(api, f"/api/v1/invoices/{number}").content == body
        assert get(api, f"/api/v1/invoices/{number}/html").content == before["html"][number]
    done = verify(api.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 erased)" in done.stdout, done.stdout
    report = ok(get(api, "/api/v1/reconciliation", **{"from": "2026-03-01", "to": "2026-03-31"}))
    assert report["unexplained"] == 0, report["differences"]
    # the next month's invoice carries no adjustment: usage of the billed month did not move
    move_to(api, "2026-05-01T00:01:00Z")
    created = run(api)["created"]
    assert created
    nxt = ok(get(api, f"/api/v1/invoices/{created[0]}"))
    assert [ln for ln in nxt["lines"] if ln["kind"] == "adjustment"] == []
    rebuilt = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "rebuild", "--check", "--data-dir", str(api.data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr


def test_files_stay_clean_after_close(tmp_path: Path) -> None:
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    move_to(api, "2026-03-03T00:00:00Z")
    setup(api)
    ingest(api)
    ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR request"}), 201)
    gen.close()
    assert leaks(api.data_dir) == {}


def test_a_resent_erased_event_is_a_duplicate_and_never_counted_again(erased_in_mode: tuple[Api, Any]) -> None:
    api, before = erased_in_mode
    again = api.post_events([zed(0, "2026-03-01T10:00:00Z", 5), zed(1, "2026-03-01T10:20:00Z", 99, "us")])
    assert again.status_code in (200, 202, 204, 207), again.text
    statuses = backfill(api, [zed(2, "2026-03-02T11:00:00Z", 1), zed(3, "2026-03-02T11:30:00Z", 8)])
    assert statuses == [("duplicate", False), ("duplicate", True)], statuses
    assert answers(api) == before["answers"]
    # an erased event cannot be found, corrected or listed by its old key
    found = get(api, f"/api/v1/events/{IDS[0]}", source="t")
    assert found.status_code == 404
    voided = post(api, f"/api/v1/events/{IDS[0]}/void", {"source": "t", "reason": "x"})
    assert voided.status_code == 404
    listed = get(api, "/api/v1/events", limit="100")
    assert listed.status_code == 200 and SUBJECT not in listed.text and EMAIL not in listed.text


def test_events_after_the_erasure_are_a_new_life_of_the_subject(erased: tuple[Api, Any]) -> None:
    api, before = erased
    r = api.post_events([ev("evt-new-life", SUBJECT, "2026-03-03T10:00:00Z", calls=3, region="eu", endpoint="/x")])
    assert r.status_code in (200, 202, 204), r.text
    rows = ok(
        api.query("m_sum", [("subject", SUBJECT), ("from", "2026-03-01T00:00:00Z"), ("to", "2026-04-01T00:00:00Z")])
    )
    assert [row["value"] for row in rows["data"]] == [3]  # only the new life: the erased usage has the pseudonym
    again = ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "second request"}), 201)
    assert again["pseudonym"] == before["record"]["pseudonym"]  # the same subject, the same pseudonym
    assert again["counts"]["ledgerEntries"] == 1
    assert leaks(api.data_dir) == {}
    done = verify(api.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr


def test_audit_record_says_who_when_why_and_how_much_never_the_subject(erased_in_mode: tuple[Api, Any]) -> None:
    api, before = erased_in_mode
    record = before["record"]
    keys = ok(get(api, "/api/v1/keys"))
    key_ids = {k["id"] for k in (keys["items"] if isinstance(keys, dict) else keys)}
    assert record["actor"] in key_ids
    assert record["reason"] == "GDPR request #118"
    assert record["erasedAt"] == "2026-04-01T00:01:00.000Z"
    assert record["pseudonym"].startswith("erased-")
    counts = record["counts"]
    assert counts["ledgerEntries"] == 4 and counts["events"] == 4
    assert counts["deadLetters"] == 1 and counts["portalTokens"] == 1 and counts["customerMappings"] == 1
    assert counts["rollupRows"] > 0
    listed = ok(get(api, "/api/v1/erasures"))
    assert listed["items"] == [record]
    portal = api.client.get("/api/v1/portal/meters/m_sum/query", headers={"Authorization": f"Bearer {before['token']}"})
    assert portal.status_code == 401, portal.text  # the subject's portal token is gone
    assert SUBJECT not in json.dumps(listed)


def test_erasure_needs_an_admin_key_and_refuses_bad_input(erased_in_mode: tuple[Api, Any]) -> None:
    api, _ = erased_in_mode
    reader = api.new_key(["read"])
    for method, path in (("POST", "/api/v1/erasures"), ("GET", "/api/v1/erasures")):
        r = api.client.request(method, path, json={"subject": "x", "reason": "y"}, headers=api.headers(reader))
        assert r.status_code == 403 and r.json()["code"] == "missing_scope", r.text
    bad = [
        ({"subject": "globex-ops", "reason": ""}, 400, "invalid_erasure"),
        ({"subject": "globex-ops", "reason": "   "}, 400, "invalid_erasure"),
        ({"subject": "", "reason": "why"}, 400, "invalid_erasure"),
        ({"subject": "globex-ops", "reason": "asked by globex-ops"}, 400, "invalid_erasure"),
        ({"subject": "globex-ops"}, 400, "invalid_erasure"),
        ({"subject": "nobody-ever", "reason": "why"}, 404, "subject_not_found"),
        ({"subject": SUBJECT, "reason": "again"}, 404, "subject_not_found"),  # nothing left of it
    ]
    for body, status, code in bad:
        r = post(api, "/api/v1/erasures", body)
        assert r.status_code == status and r.json()["code"] == code, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    garbage = api.client.post(
        "/api/v1/erasures", content=b"{", headers=api.headers(**{"Content-Type": "application/json"})
    )
    assert garbage.status_code == 400


def test_real_server_and_cli(tmp_path: Path) -> None:
    """Erasure through ``meterline erase`` against a running server: the files are clean while it
    runs and after it stops; ``meterline erasures`` lists the record; verify passes."""
    server = start_server(tmp_path / "data")
    try:
        h = {"Authorization": f"Bearer {server.key}"}
        with httpx.Client(base_url=server.url, headers=h, timeout=30) as c:
            r = c.post(
                "/api/v1/meters",
                json={"slug": "m", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.calls"},
            )
            assert r.status_code == 201, r.text
            hour = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H")
            events = [zed(i, f"{hour}:0{i}:00Z", i + 1) for i in range(4)]
            events.append(ev("other-1", "someone-else", f"{hour}:00:00Z", calls=10))
            r = c.post("/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"})
            assert r.status_code in (200, 202, 204), r.text
            q = {"from": f"{hour}:00:00Z", "to": f"{hour}:59:00Z", "windowSize": "MINUTE"}
            total = c.get("/api/v1/meters/m/query", params=q).json()["data"]
            assert leaks(server.data_dir)
            env = {"METERLINE_URL": server.url, "METERLINE_API_KEY": server.key}
            cli = [sys.executable, "-m", "meterline.cli.main"]
            done = subprocess.run(
                [*cli, "erase", SUBJECT, "--reason", "GDPR", "--yes"],
                env={**_env(), **env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert SUBJECT not in done.stdout and "erased-" in done.stdout
            assert leaks(server.data_dir) == {}  # live: the WAL was truncated after the commit
            assert c.get("/api/v1/meters/m/query", params=q).json()["data"] == total
            listed = subprocess.run(
                [*cli, "erasures"], env={**_env(), **env}, capture_output=True, text=True, timeout=120
            )
            assert listed.returncode == 0 and "GDPR" in listed.stdout, listed.stdout + listed.stderr
            empty = subprocess.run(
                [*cli, "erase", SUBJECT, "--reason", "", "--yes"],
                env={**_env(), **env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert empty.returncode != 0 and "reason" in (empty.stdout + empty.stderr)
        checked = verify(server.data_dir)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        server.stop()
    assert leaks(server.data_dir) == {}


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_erased_keys_still_deduplicate_after_a_restart_and_a_lost_dedupe_index(tmp_path: Path) -> None:
    """The dedupe index is rebuilt from the ledger (its tail at every start, all of it when its
    directory is lost): an erased entry is indexed under its original key's hash."""
    overrides: dict[str, dict[str, object]] = {"billing": {"scheduler_enabled": False}}
    gen = build_api(tmp_path, **overrides)
    api = next(gen)
    move_to(api, "2026-03-03T00:00:00Z")
    setup(api)
    ingest(api)
    ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
    before = answers(api)
    gen.close()
    for lose_index in (False, True):
        if lose_index:
            shutil.rmtree(tmp_path / "data" / "dedupe-index")
        gen = build_api(tmp_path, **overrides)
        api = next(gen)
        try:
            move_to(api, "2026-03-03T00:00:00Z")
            statuses = backfill(api, [zed(0, "2026-03-01T10:00:00Z", 5), zed(3, "2026-03-02T11:30:00Z", 6)])
            assert statuses == [("duplicate", False), ("duplicate", True)], statuses
            assert answers(api) == before
        finally:
            gen.close()
    assert leaks(tmp_path / "data") == {}


def test_a_hand_edit_of_an_erased_entry_is_still_caught_by_verify(tmp_path: Path) -> None:
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    move_to(api, "2026-03-03T00:00:00Z")
    setup(api)
    ingest(api)
    head = tmp_path / "head.json"
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "meterline.cli.main",
            "verify",
            "--data-dir",
            str(tmp_path / "data"),
            "--export-head",
            str(head),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0, exported.stderr
    ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
    gen.close()
    assert verify(tmp_path / "data").returncode == 0
    against = subprocess.run(
        [
            sys.executable,
            "-m",
            "meterline.cli.main",
            "verify",
            "--data-dir",
            str(tmp_path / "data"),
            "--against",
            str(head),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert against.returncode == 0, against.stdout + against.stderr  # a head from before the erasure still holds
    conn = sqlite3.connect(tmp_path / "data" / DB_FILE)
    raw = conn.execute("SELECT raw FROM events WHERE seq = 2").fetchone()[0]
    conn.execute("UPDATE events SET raw = ? WHERE seq = 2", (raw.replace(b'"calls":9', b'"calls":8'),))
    conn.commit()
    conn.close()
    done = verify(tmp_path / "data")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "entry 2" in done.stdout + done.stderr and "erased" in done.stdout + done.stderr


def test_an_entry_edited_before_the_erasure_is_refused_not_laundered(tmp_path: Path) -> None:
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    move_to(api, "2026-03-03T00:00:00Z")
    setup(api)
    ingest(api)
    conn = sqlite3.connect(tmp_path / "data" / DB_FILE)
    conn.execute("UPDATE events SET time_us = time_us + 1 WHERE seq = 3")
    conn.commit()
    conn.close()
    try:
        r = post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"})
        assert r.status_code == 409 and r.json()["code"] == "ledger_tampered", r.text
        assert ok(get(api, "/api/v1/erasures"))["items"] == []
    finally:
        gen.close()
    done = verify(tmp_path / "data")
    assert done.returncode == 1 and "entry 3" in done.stdout + done.stderr


def test_quarantined_events_of_the_subject_are_deleted(tmp_path: Path) -> None:
    gen = build_api(tmp_path, ingest={"unknown_subjects": "quarantine"}, billing={"scheduler_enabled": False})
    api = next(gen)
    try:
        move_to(api, "2026-03-03T00:00:00Z")
        ok(api.create_meter(slug="m", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
        ok(post(api, "/api/v1/customers", {"key": "known", "subjectKeys": ["known"]}), 201)
        r = api.post_events([zed(0, "2026-03-01T10:00:00Z", 5), zed(1, "2026-03-01T10:20:00Z", 9)])
        assert r.status_code in (200, 202, 204), r.text
        assert leaks(api.data_dir)
        record = ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
        assert record["counts"]["quarantined"] == 2 and record["counts"]["ledgerEntries"] == 0
        assert leaks(api.data_dir) == {}
    finally:
        gen.close()


def test_ingest_of_the_subject_during_the_erasure_is_before_it_or_a_new_life(tmp_path: Path) -> None:
    """Batches of the subject keep arriving while it is erased: every entry acknowledged before
    the erasure's commit is erased, every later one is kept as sent; nothing is lost or counted
    twice, and the rollups stay a replay of the ledger."""
    server = start_server(tmp_path / "data")
    hour = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H")
    sent: list[int] = []
    stop = threading.Event()

    def produce() -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30) as c:
            n = 0
            while not stop.is_set():
                batch = [
                    ev(f"live-{n + i}", SUBJECT, f"{hour}:{(n + i) % 60:02d}:00Z", calls=1, email=EMAIL)
                    for i in range(20)
                ]
                r = c.post("/api/v1/events", json=batch, headers={"Content-Type": "application/cloudevents-batch+json"})
                assert r.status_code in (200, 202, 204), r.text
                sent.append(len(batch))
                n += len(batch)

    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=60) as c:
            r = c.post(
                "/api/v1/meters",
                json={"slug": "m", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.calls"},
            )
            assert r.status_code == 201, r.text
            producer = threading.Thread(target=produce)
            producer.start()
            while sum(sent) < 200:
                time.sleep(0.01)
            record = c.post("/api/v1/erasures", json={"subject": SUBJECT, "reason": "GDPR"})
            time.sleep(0.3)
            stop.set()
            producer.join()
            assert record.status_code == 201, record.text
            through = record.json()["throughPosition"]
            end = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:00:00Z")
            q = {"from": f"{hour}:00:00Z", "to": end}
            rows = c.get("/api/v1/meters/m/query", params=q, headers={"Meterline-Min-Position": "999999999"}).json()
            assert sum(Decimal(str(row["value"])) for row in rows["data"]) == sum(sent), rows
    finally:
        server.stop()
    conn = sqlite3.connect(tmp_path / "data" / DB_FILE)
    seqs = conn.execute("SELECT seq, subject FROM events").fetchall()
    erased = {s for (s,) in conn.execute("SELECT seq FROM ledger_erased")}
    conn.close()
    assert len(seqs) == sum(sent)
    assert erased and erased == {s for s, _ in seqs if s <= through}
    later = [subject for s, subject in seqs if s > through]
    assert later and set(later) == {SUBJECT}  # a new life, kept as sent
    assert verify(tmp_path / "data").returncode == 0


def test_a_store_from_before_secure_delete_is_vacuumed_by_its_first_erasure(tmp_path: Path) -> None:
    """Bytes a delete left in free space before ``secure_delete`` (here: a customer deleted
    while it was off) are gone after the first erasure."""
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    move_to(api, "2026-03-03T00:00:00Z")
    setup(api)
    ingest(api)
    gen.close()
    conn = sqlite3.connect(tmp_path / "data" / DB_FILE)
    conn.execute("PRAGMA secure_delete=OFF")
    conn.execute("DELETE FROM meta WHERE key = 'secure_delete'")
    conn.execute("CREATE TABLE old_notes (note TEXT)")
    conn.executemany("INSERT INTO old_notes VALUES (?)", [(f"{SUBJECT} wrote {EMAIL} {i}" * 20,) for i in range(200)])
    conn.commit()
    conn.execute("DROP TABLE old_notes")  # its pages are free, not zeroed
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    try:
        ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
        assert leaks(api.data_dir) == {}
    finally:
        gen.close()
    conn = sqlite3.connect(tmp_path / "data" / DB_FILE)
    assert conn.execute("SELECT value FROM meta WHERE key = 'secure_delete'").fetchone() == ("vacuumed",)
    conn.close()


def test_every_connection_zeroes_what_it_deletes(tmp_path: Path) -> None:
    """``secure_delete`` is set explicitly: some SQLite builds default to it, others do not."""
    conn = connect(tmp_path / "x.db")
    try:
        assert conn.execute("PRAGMA secure_delete").fetchone() == (1,)
    finally:
        conn.close()


def test_a_customer_whose_key_is_the_subject_keeps_its_usage_and_subscription_under_the_pseudonym(
    tmp_path: Path,
) -> None:
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    try:
        move_to(api, "2026-03-03T00:00:00Z")
        ok(api.create_meter(slug="m_sum", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
        ok(post(api, "/api/v1/customers", {"key": SUBJECT, "name": "Zed"}), 201)
        ok(post(api, "/api/v1/billing/plans", PLAN), 201)
        ok(post(api, "/api/v1/billing/plans/pro/versions/1/publish"))
        subscribe(api, customer=SUBJECT)
        r = api.post_events([zed(0, "2026-03-01T10:00:00Z", 5), zed(1, "2026-03-02T10:00:00Z", 7)])
        assert r.status_code in (200, 202, 204), r.text
        record = ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
        assert record["counts"]["customerKeys"] == 1
        alias = record["pseudonym"]
        customer = ok(get(api, f"/api/v1/customers/{alias}"))
        assert customer["key"] == alias and customer["name"] == "Zed"
        assert get(api, f"/api/v1/customers/{SUBJECT}").status_code == 404
        q = [("from", "2026-03-01T00:00:00Z"), ("to", "2026-04-01T00:00:00Z"), ("subject", alias)]
        assert [row["value"] for row in ok(api.query("m_sum", q))["data"]] == [12]
        move_to(api, "2026-04-01T00:01:00Z")
        created = run(api)["created"]
        assert len(created) == 1  # the subscription still bills, now under the pseudonymous key
        invoice = ok(get(api, f"/api/v1/invoices/{created[0]}"))
        assert invoice["customer"] == alias and any(ln.get("quantity") == "12" for ln in invoice["lines"])
    finally:
        gen.close()


def test_corrected_events_of_the_subject_are_erased_with_every_version(tmp_path: Path) -> None:
    """An amend that moved an event to another hour (a key over two hours: the last pass) and a
    void (its record is reduced too): totals, verify and rebuild hold, nothing is left."""
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    try:
        move_to(api, "2026-03-03T00:00:00Z")
        setup(api)
        ingest(api)
        amended = {
            **zed(0, "2026-03-01T12:30:00Z", 6),
            "data": {"calls": 6, "region": "eu", "endpoint": "/x", "email": EMAIL},
        }
        for key in ("id", "source", "specversion"):
            amended.pop(key)
        api.clock.advance(60)  # the amend is received after the original
        r = post(api, f"/api/v1/events/{IDS[0]}/amend", {"source": "t", "reason": "wrong hour", "event": amended})
        assert r.status_code == 201, r.text
        r = post(api, f"/api/v1/events/{IDS[1]}/void", {"source": "t", "reason": "test traffic"})
        assert r.status_code == 201, r.text
        before = answers(api)
        record = ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
        assert record["counts"]["ledgerEntries"] == 6 and record["counts"]["events"] == 4
        assert answers(api) == before
        assert leaks(api.data_dir) == {}
        statuses = backfill(api, [zed(0, "2026-03-01T10:00:00Z", 5), zed(1, "2026-03-01T10:20:00Z", 9, "us")])
        # compared with the version that counts (the amend), or the voided one
        assert statuses == [("duplicate", True), ("duplicate", False)]
        done = verify(api.data_dir)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        gen.close()


@pytest.fixture(params=MODES)
def api_in_mode(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    yield from mode_api(request, tmp_path, billing={"scheduler_enabled": False})


def test_a_deleted_customer_keeps_the_pseudonym_not_the_subject(api_in_mode: Api) -> None:
    """A deleted customer is kept with the subject keys it had (as OpenMeter keeps it): the
    erasure renames the subject there too, so no record of the customers still names it."""
    api = api_in_mode
    move_to(api, "2026-03-03T00:00:00Z")
    ok(api.create_meter(slug="m_sum", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
    gone = ok(post(api, "/api/v1/customers", {"key": "initech", "subjectKeys": ["initech-ops", SUBJECT]}), 201)
    r = api.post_events([zed(0, "2026-03-01T10:00:00Z", 5)])
    assert r.status_code in (200, 202, 204), r.text
    assert api.client.delete("/api/v1/customers/initech", headers=api.headers()).status_code == 204
    assert ok(get(api, f"/api/v1/customers/{gone['id']}"))["subjectKeys"] == ["initech-ops", SUBJECT]
    record = ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
    assert record["counts"]["customerMappings"] == 1
    kept = ok(get(api, f"/api/v1/customers/{gone['id']}"))
    assert kept["deletedAt"] and kept["usageAttribution"]["subjectKeys"] == sorted(["initech-ops", record["pseudonym"]])
    listed = ok(get(api, "/api/v1/customers?includeDeleted=true"))["items"]
    assert SUBJECT not in json.dumps(listed)


def test_a_subject_with_gauge_readings_is_erased(tmp_path: Path) -> None:
    """A TIME_WEIGHTED_SUM meter keeps counts of readings in its summaries: the erasure folds
    the subject's and the pseudonym's day and month rows as counts, its integrals stay, and
    verify holds (it failed with storage_unavailable, nothing erased)."""
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    try:
        move_to(api, "2026-03-03T00:00:00Z")
        spec = {"slug": "gb", "eventType": "storage", "aggregation": "TIME_WEIGHTED_SUM", "valueProperty": "$.gb"}
        ok(api.create_meter(**spec), 201)
        readings = [
            {"specversion": "1.0", "id": f"r{i}", "source": "probe", "type": "storage", "subject": SUBJECT,
             "time": at, "data": {"gb": gb, "note": EMAIL}}
            for i, (at, gb) in enumerate([("2026-03-01T10:00:00Z", 10), ("2026-03-02T06:30:00Z", 4)])
        ]  # fmt: skip
        assert api.post_events(readings).status_code == 204
        params = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z", "windowSize": "DAY"}
        before = [r["value"] for r in ok(api.query("gb", {**params, "consistency": "strong"}))["data"]]
        assert before == [10 * 14 * 3600, (10 * 6.5 + 4 * 17.5) * 3600]
        ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
        assert [r["value"] for r in ok(api.query("gb", params))["data"]] == before
        assert leaks(api.data_dir) == {}
    finally:
        gen.close()
    done = verify(tmp_path / "data")
    assert done.returncode == 0, done.stdout + done.stderr
