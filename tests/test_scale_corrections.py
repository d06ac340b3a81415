"""Corrections in scale mode on the local stack: voids and amends move every aggregation
exactly once the sink worker applied them (an amend may move an event to another hour and to
another subject, so another partition's hours); the errors and the history answer as in
embedded mode; two voids of one event sent at once through two nodes are one 201 and one 409;
and a worker killed with SIGKILL around applying a correction neither applies it twice nor
loses it."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import T0_US, Api, build_api, build_scale_api
from scale_site import Site, site
from stack.launch import Stack
from starlette.testclient import TestClient
from test_billing_api import calls, setup_billing
from test_billing_api import ev as bev
from test_corrections import entitle, expected, usage_now
from test_scale_chain import _rechain, verify

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.dedupe import PgDedupe
from meterline.adapters.postgres.erasure import PgErasureCatalog
from meterline.api.app import create_app
from meterline.bootstrap import rebuild_scale
from meterline.config import load_config
from meterline.domain.clock import FixedClock
from meterline.domain.erasure import dedupe_key
from meterline.ports.dedupe import EventKey, Verdict

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

EXTRA = "\n[aggregation]\nmax_wait = 60.0\n[billing]\nscheduler_enabled = false\n"
AGGREGATIONS = ("SUM", "COUNT", "AVG", "MIN", "MAX", "LATEST", "UNIQUE_COUNT")
HOURS = ("2026-03-01T08", "2026-03-01T09", "2026-03-01T10")
KILLED_WORKER = Path(__file__).parent / "killed_worker.py"


def ev(id_: str, subject: str, hour: int, minute: int, v: str, user: str, region: str = "eu") -> dict[str, Any]:
    return {
        "specversion": "1.0", "id": id_, "source": "s", "type": "job", "subject": subject,
        "time": f"{HOURS[hour]}:{minute:02d}:00Z", "data": {"v": v, "user": user, "region": region},
    }  # fmt: skip


EVENTS = [
    ev("e1", "acme", 0, 1, "5", "u1"),
    ev("e2", "acme", 0, 2, "9", "u2"),  # the MAX, voided
    ev("e3", "acme", 0, 40, "1", "u3"),  # the MIN, amended
    ev("e4", "acme", 0, 50, "7", "u1"),  # the LATEST of the first hour, amended into another hour and subject
    ev("e5", "acme", 1, 10, "4", "u4"),
    ev("e6", "beta", 0, 5, "3", "u5"),
]


@pytest.fixture(scope="module")
def fixsite(scale_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A site of two partitions with one sink worker feeding the live usage counters, shared by
    this module's tests (each works in a namespace of its own)."""
    with site(scale_stack, tmp_path_factory.mktemp("fixes"), partitions=2, extra=EXTRA) as s:
        text = s.config_path.read_text()  # the live usage counters on, under keys of this site's own
        redis = f'url = "{scale_stack.redis}"'
        s.config_path.write_text(text.replace(redis, f'{redis}\ncounters = true\nkey_prefix = "{s.dir.name}:"'))
        s.worker()
        yield s


@pytest.fixture
def sapi(fixsite: Site, tmp_path: Path) -> Iterator[Api]:
    yield from build_scale_api(fixsite, tmp_path)


@pytest.fixture
def eapi(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path / "embedded")


def hourly(api: Api, meter: str, subject: str, **window: str) -> dict[str, Decimal]:
    params = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T12:00:00Z", "windowSize": "HOUR", "subject": subject}
    r = api.query(meter, {**params, **window})
    assert r.status_code == 200, r.text
    return {row["windowStart"][:13]: Decimal(str(row["value"])) for row in r.json()["data"]}


def check_all(api: Api, events: list[dict[str, Any]]) -> None:
    for aggregation in AGGREGATIONS:
        for subject in ("acme", "beta"):
            got = hourly(api, f"m_{aggregation.lower()}", subject)
            want = {h: v for h in HOURS if (v := expected(events, aggregation, subject, h)) is not None}
            assert got == want, (aggregation, subject, got, want)


def correct(api: Api, event_id: str, action: str, status: int = 201, **body: Any) -> Any:
    r = api.client.post(f"/api/v1/events/{event_id}/{action}", json={"source": "s", **body}, headers=api.headers())
    assert r.status_code == status, r.text
    return r.json()


def history(api: Api, event_id: str) -> Any:
    r = api.client.get(f"/api/v1/events/{event_id}", params={"source": "s"}, headers=api.headers())
    assert r.status_code == 200, r.text
    return r.json()


def create_meters(api: Api) -> None:
    for aggregation in AGGREGATIONS:
        spec: dict[str, Any] = {"slug": f"m_{aggregation.lower()}", "eventType": "job", "aggregation": aggregation}
        if aggregation != "COUNT":
            spec["valueProperty"] = "$.user" if aggregation == "UNIQUE_COUNT" else "$.v"
        spec["groupBy"] = {"region": "$.region"}
        assert api.create_meter(**spec).status_code == 201


def corrections(api: Api) -> list[dict[str, Any]]:
    """The sequence both modes are put through; the events that count afterwards."""
    correct(api, "e2", "void", reason="test traffic")
    amended = {**EVENTS[2], "data": {"v": "2", "user": "u9", "region": "us"}}
    correct(api, "e3", "amend", reason="wrong value", event=amended)
    moved = {**EVENTS[3], "subject": "beta", "time": f"{HOURS[2]}:30:00Z", "data": {"v": "8", "user": "u1"}}
    moved["data"]["region"] = "eu"
    correct(api, "e4", "amend", reason="clock skew", event=moved)
    again = {**moved, "data": {"v": "6", "user": "u2", "region": "eu"}}
    correct(api, "e4", "amend", reason="second fix", event=again)
    return [EVENTS[0], amended, again, EVENTS[4], EVENTS[5]]


def shape(h: Any) -> Any:
    """A history without what differs between modes by design: ledger positions, receipt
    times and the key ids of the actors."""
    out = {k: v for k, v in h.items() if k != "history"}
    out["history"] = [{k: v for k, v in x.items() if k not in ("seq", "receivedAt", "actor")} for x in h["history"]]
    assert all(("actor" in x) == (x["action"] != "ingest") for x in h["history"])
    return out


def test_void_and_amend_move_every_aggregation_exactly_and_answer_as_embedded(sapi: Api, eapi: Api) -> None:
    answers = []
    for api in (sapi, eapi):
        create_meters(api)
        r = api.post_events(EVENTS)
        assert r.status_code in (200, 202, 204), r.text
        check_all(api, EVENTS)
        now = corrections(api)
        check_all(api, now)  # read-your-writes: the query waits for the worker to apply them
        # errors: unknown event, a second void, an amend of a voided event
        assert correct(api, "nope", "void", 404, reason="x")["code"] == "event_not_found"
        assert correct(api, "e2", "void", 409, reason="again")["code"] == "event_voided"
        assert correct(api, "e2", "amend", 409, reason="again", event=EVENTS[1])["code"] == "event_voided"
        # a retry of a corrected key is a duplicate: never counted again
        assert api.post_events([EVENTS[1], EVENTS[3]]).status_code in (200, 202, 204)
        check_all(api, now)
        listed = api.client.get("/api/v1/events", params={"limit": "100"}, headers=api.headers()).json()
        assert sorted(e["event"]["id"] for e in listed) == ["e1", "e2", "e3", "e4", "e5", "e6"]
        answers.append({e: history(api, e) for e in ("e1", "e2", "e3", "e4")})
    scale, embedded = answers
    assert {e: shape(h) for e, h in scale.items()} == {e: shape(h) for e, h in embedded.items()}
    e4 = scale["e4"]["history"]
    assert [v["action"] for v in e4] == ["ingest", "amend", "amend"]
    assert e4[0]["seq"] < e4[1]["seq"] < e4[2]["seq"]  # places in the original's partition, in order
    assert e4[1]["actor"] == e4[2]["actor"]  # the admin key's id


def test_a_correction_is_answered_with_its_log_position_and_the_next_read_waits_for_it(sapi: Api) -> None:
    api = sapi
    create_meters(api)
    assert api.post_events(EVENTS).status_code in (200, 202, 204)
    r = api.client.post("/api/v1/events/e1/void", json={"source": "s", "reason": "dup"}, headers=api.headers())
    assert r.status_code == 201, r.text
    _, _, after = r.headers["Meterline-Log-Positions"].partition(":")
    assert int(after) == r.json()["correction"]  # the entry's seq in that partition
    got = hourly(api, "m_sum", "acme", consistency="eventual")
    assert got[HOURS[0]] in (Decimal(22), Decimal(17))  # applied or not yet, never anything else
    assert hourly(api, "m_sum", "acme")[HOURS[0]] == Decimal(17)  # strong: waits for it


def test_entitlement_values_from_the_live_counters_follow_corrections(sapi: Api) -> None:
    """The counters fold no correction: usage that corrections touched is read from ClickHouse."""
    api = sapi
    setup_billing(api)
    entitle(api)
    calls(api, "a1", "acme", "2026-03-01T09:00:00Z", 300)
    calls(api, "a2", "acme-eu", "2026-03-01T09:10:00Z", 200)
    assert usage_now(api) == 500
    fixed = api.client.post(
        "/api/v1/events/a2/void", json={"source": "t", "reason": "duplicate job"}, headers=api.headers()
    )
    assert fixed.status_code == 201, fixed.text
    assert usage_now(api) == 300
    amended = bev("a1", "acme", "2026-03-01T09:00:00Z", calls=250)
    fixed = api.client.post(
        "/api/v1/events/a1/amend", json={"source": "t", "reason": "wrong", "event": amended}, headers=api.headers()
    )
    assert fixed.status_code == 201, fixed.text
    assert usage_now(api) == 250


def test_concurrent_voids_of_one_event_through_two_nodes_apply_once(sapi: Api, fixsite: Site) -> None:
    """The journal holds the key across nodes: of two voids sent at once, one is 201, the other
    409 ``event_voided``, and the history holds one void."""
    api = sapi
    events = [ev(f"v{i}", f"c{i}", 1, i, "1", "u") for i in range(8)]
    assert api.post_events(events).status_code in (200, 202, 204)
    for e in events:
        history(api, e["id"])  # stored (this node waits for its own writes)
    config = load_config(fixsite.config_path, {"auth": {"bootstrap_admin_key": False}})
    with TestClient(create_app(config, FixedClock(T0_US))) as other:
        clients = [api.client, other]
        for e in events:
            statuses: list[int] = []
            threads = [threading.Thread(target=void, args=(c, api, e["id"], statuses)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(statuses) == [201, 409], (e["id"], statuses)
            assert [v["action"] for v in history(api, e["id"])["history"]] == ["ingest", "void"]


def void(client: TestClient, api: Api, event_id: str, statuses: list[int]) -> None:
    body = {"source": "s", "reason": "raced"}
    statuses.append(client.post(f"/api/v1/events/{event_id}/void", json=body, headers=api.headers()).status_code)


# -- a worker killed around applying a correction ----------------------------------------


@pytest.fixture
def onesite(scale_stack: Stack, tmp_path: Path) -> Iterator[Site]:
    with site(scale_stack, tmp_path / "site", partitions=1, extra=EXTRA) as s:
        yield s


@pytest.mark.parametrize("point", ["before-insert", "after-corrections", "before-done"])
def test_a_worker_killed_while_applying_a_correction_applies_it_once(onesite: Site, tmp_path: Path, point: str) -> None:
    s = onesite
    config = s.config
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    first = s.worker()
    for api in build_scale_api(s, tmp_path):
        create_meters(api)
        assert api.post_events(EVENTS).status_code in (200, 202, 204)
        check_all(api, EVENTS)  # applied by the first worker
        first.terminate()
        assert first.wait(30) == 0
        killer = spawn_killer(s, point)
        now = corrections(api)  # written to the log; the worker applying them dies
        assert killer.wait(120) == -signal.SIGKILL, s.log_tail("workers.log")
        stored = conn.rows("SELECT count() FROM usage_corrections")[0][0]
        assert (stored == 0) == (point == "before-insert")  # the batch stopped half-way
        s.worker()
        check_all(api, now)  # the next worker redoes the recorded range: exactly once
        rows = conn.rows("SELECT count(), uniqExact(stream, seq) FROM usage_corrections")[0]
        assert rows == (4, 4)
        raw = conn.rows("SELECT count(), uniqExact(stream, seq) FROM events")[0]
        assert raw == (10, 10)  # six events, four corrections: each stored once
        assert [v["action"] for v in history(api, "e4")["history"]] == ["ingest", "amend", "amend"]
    report = rebuild_scale(config, check=True)  # the rollups are still a fold of the log's events
    assert report.identical, report.details
    verified = verify(s, "--skip-rollups")  # corrections are linked into the chain like any entry, once
    assert verified.returncode == 0 and "10 entries walked" in verified.stdout, verified.stdout + verified.stderr
    seq = conn.rows("SELECT max(seq) FROM events WHERE corrects != 0")[0][0]
    edit = "ALTER TABLE events UPDATE corrects = corrects + 1 WHERE seq = {q:UInt64} SETTINGS mutations_sync = 2"
    conn.command(edit, {"q": seq})  # the last correction now names another version by hand
    edited = verify(s, "--skip-rollups")
    assert edited.returncode == 1, edited.stdout + edited.stderr
    assert f"partition 0 offset {seq - 1} (event " in edited.stderr and "does not match the chain" in edited.stderr
    conn.close()


def spawn_killer(s: Site, point: str) -> subprocess.Popen[bytes]:
    process = spawn_script([str(KILLED_WORKER), str(s.config_path), point], s.dir / "workers.log")
    s.processes.append(process)
    return process


def spawn_script(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "METERLINE_LOG__FORMAT": "text"},
        )


def test_corrections_with_raw_retention_outlive_the_raw_events(onesite: Site, tmp_path: Path) -> None:
    """With ``retention.raw_events`` set, corrections work as without it: the raw events of the
    hours they touch are kept past the raw table's TTL, also a late event that lands in a
    corrected hour afterwards. Once the TTL removed the raw rows (the retention shortened below
    the events' age), every aggregation still answers exactly; a correction or the history of an
    event whose hour retention may have emptied is ``event_pruned``, as in embedded mode."""
    s = onesite
    s.worker()
    conn = Connection(s.config.clickhouse.url, s.config.clickhouse.database)
    long = {"retention": {"raw_events": "3650d"}, "reconcile": {"lookback": "P30D"}}
    short = {"retention": {"raw_events": "P30D"}, "reconcile": {"lookback": "P30D"}}
    late = ev("e7", "acme", 0, 45, "11", "u7")  # lands in a corrected hour after its correction
    other = ev("e8", "beta", 1, 20, "2", "u8")  # an hour no correction touches
    for api in build_scale_api(s, tmp_path / "long", **long):
        create_meters(api)
        assert api.post_events(EVENTS).status_code in (200, 202, 204)
        check_all(api, EVENTS)
        now = corrections(api)
        assert api.post_events([late, other]).status_code in (200, 202, 204)
        now += [late, other]
        check_all(api, now)
        kept = conn.rows("SELECT uniqExact(stream, seq) FROM kept_events")[0][0]
        assert kept == 9  # acme 08h: e1-e4, the void, e3's amend, the late e7; beta 10h: e4's two amends
        held = ev("q1", "ghost", 1, 30, "6", "u9")  # confirmed in the dedupe store, held in the quarantine
        assert settings(api, "quarantine") == 200
        r = api.post_events([held], Prefer="return=representation")
        assert r.status_code == 200 and r.json()["events"][0]["status"] == "quarantined", r.text
        assert settings(api, "accept") == 200
    claimed = pending_claim(s, "c1")  # claimed (as by a node that died before its write), never confirmed
    config = load_config(s.config_path, {"auth": {"bootstrap_admin_key": False}, **short})
    with TestClient(create_app(config, FixedClock(T0_US))) as client:  # its start sets the TTL: March is past it
        api = dataclasses.replace(api, client=client, config=config)
        conn.command("OPTIMIZE TABLE events FINAL")
        assert conn.rows("SELECT count() FROM events")[0][0] == 0  # every raw row expired
        check_all(api, now)  # corrected hours from the kept events, the others from the rollups
        assert hourly(api, "m_sum", "beta")["2026-03-01T09"] == Decimal(2)
        r = api.client.post("/api/v1/events/e1/void", json={"source": "s", "reason": "x"}, headers=api.headers())
        assert r.status_code == 409 and r.json()["code"] == "event_pruned", r.text
        amend = {**EVENTS[4], "data": {"v": "1", "user": "u4"}}
        body = {"source": "s", "reason": "x", "event": amend}
        r = api.client.post("/api/v1/events/e5/amend", json=body, headers=api.headers())
        assert r.status_code == 409 and r.json()["code"] == "event_pruned", r.text  # its raw row is gone
        r = api.client.get("/api/v1/events/e5", params={"source": "s"}, headers=api.headers())
        assert r.status_code == 404 and r.json()["code"] == "event_pruned", r.text  # the dedupe store knows it
        for never in ("nope", "q1", claimed):  # no key accepted: unknown, quarantined, claimed only
            void = {"source": "s", "reason": "x"}
            r = api.client.post(f"/api/v1/events/{never}/void", json=void, headers=api.headers())
            assert r.status_code == 404 and r.json()["code"] == "event_not_found", (never, r.text)
            r = api.client.get(f"/api/v1/events/{never}", params={"source": "s"}, headers=api.headers())
            assert r.status_code == 404 and r.json()["code"] == "event_not_found", (never, r.text)
        erase = {"subject": "ghost", "reason": "request"}  # its quarantined event goes, and with it its key
        r = api.client.post("/api/v1/erasures", json=erase, headers=api.headers())
        assert r.status_code == 201 and r.json()["counts"]["dedupeKeys"] == 1, r.text
        assert dedupe_rows(s, "q1") == 0  # no trace of the id
        r = api.client.post("/api/v1/events/q1/void", json={"source": "s", "reason": "x"}, headers=api.headers())
        assert r.status_code == 404 and r.json()["code"] == "event_not_found", r.text
        r = api.client.post("/api/v1/events/e3/amend", json={**body, "event": EVENTS[2]}, headers=api.headers())
        assert r.status_code == 409 and r.json()["code"] == "event_pruned", r.text  # kept, but in a past hour
        for event_id in ("e4", "e2"):  # an original past the retention is pruned, kept or not
            r = api.client.get(f"/api/v1/events/{event_id}", params={"source": "s"}, headers=api.headers())
            assert r.status_code == 404 and r.json()["code"] == "event_pruned", r.text
        namespace = dedupe_namespace(s)
        # beta's e6 and e8 left with the TTL: nothing ties their keys to beta any more, and
        # their rows never held an identifier to erase
        r = api.client.post("/api/v1/erasures", json={"subject": "beta", "reason": "request"}, headers=api.headers())
        assert r.status_code == 201, r.text
        r = api.post_events([EVENTS[5], other], Prefer="return=representation")
        assert [e["status"] for e in r.json()["events"]] == ["duplicate", "duplicate"], r.text  # not counted again
        r = api.post_events(
            [{**other, "data": {"v": "3", "user": "u8", "region": "eu"}}], Prefer="return=representation"
        )
        assert r.json()["events"][0]["status"] == "duplicate" and r.json()["events"][0].get("conflict"), r.text
        assert plaintext_in_dedupe_keys(s, [namespace, *(e["id"] for e in [*EVENTS, late, other])]) == []
    conn.close()


def dedupe_namespace(s: Site) -> str:
    db = PgDatabase(s.config.postgres.dsn, max_size=1)
    try:
        return db_namespace(db, "e1")
    finally:
        db.close()


def plaintext_in_dedupe_keys(s: Site, needles: list[str]) -> list[tuple[Any, ...]]:
    """Rows of ``dedupe_keys`` holding one of ``needles`` in any column (every column read as
    bytes); the table has no text column at all."""
    with psycopg.connect(s.config.postgres.dsn, autocommit=True) as c:
        kinds = c.execute(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'dedupe_keys'"
        ).fetchall()
        assert {k for (k,) in kinds} == {"bytea", "uuid", "boolean", "bigint"}, kinds
        rows = c.execute("SELECT * FROM dedupe_keys").fetchall()
    long = [n.encode() for n in needles if len(n) > 4]  # a 2-byte id would match random hash bytes
    return [row for row in rows if any(n in b"".join(str(v).encode() + _raw(v) for v in row) for n in long)]


def _raw(v: Any) -> bytes:
    return bytes(v) if isinstance(v, (bytes, memoryview)) else b""


def settings(api: Api, policy: str) -> int:
    body = {"unknownSubjects": policy}
    return api.client.put("/api/v1/settings", json=body, headers=api.headers()).status_code


def pending_claim(s: Site, event_id: str) -> str:
    """Claim a key of every namespace's source ``s`` in the site's dedupe store at ``T0_US``
    without confirming it; the id."""
    db = PgDatabase(s.config.postgres.dsn, max_size=1)
    try:
        store = PgDedupe(db, lambda: T0_US, lease_us=1_000_000, secret=PgErasureCatalog(db, lambda: T0_US).secret)
        namespace = db_namespace(db, "e1")
        assert store.claim([EventKey(namespace, "s", event_id, b"d")]).verdicts == [Verdict.CLAIMED]
    finally:
        db.close()
    return event_id


def dedupe_rows(s: Site, event_id: str) -> int:
    """The rows of the test's key ``event_id`` (source ``s``) in the site's dedupe store."""
    db = PgDatabase(s.config.postgres.dsn, max_size=1)
    try:
        name = dedupe_key(PgErasureCatalog(db, lambda: T0_US).secret(), db_namespace(db, "e1"), "s", event_id)
        with db.tx() as conn:
            row = conn.execute("SELECT count(*) FROM dedupe_keys WHERE key = %s", (name,)).fetchone()
    finally:
        db.close()
    assert row is not None
    return int(row[0])


def db_namespace(db: PgDatabase, event_id: str) -> str:
    """The namespace of the test's own confirmed key ``event_id`` (source ``s``): the dedupe
    store names keys by keyed hashes only, so each namespace of the catalog is tried."""
    secret = PgErasureCatalog(db, lambda: T0_US).secret()
    with db.tx() as conn:
        spaces = [str(ns) for (ns,) in conn.execute("SELECT DISTINCT namespace FROM api_keys").fetchall()]
        names = {dedupe_key(secret, ns, "s", event_id): ns for ns in spaces}
        rows = conn.execute("SELECT key FROM dedupe_keys WHERE key = ANY(%s::bytea[])", (list(names),)).fetchall()
    assert len(rows) == 1, rows
    return names[bytes(rows[0][0])]


def test_an_amend_into_an_hour_retention_may_have_emptied_is_refused(onesite: Site, tmp_path: Path) -> None:
    """The hour an amend moves an event into is answered from its raw events too: one that
    starts before ``now - raw_events`` (ClickHouse's clock or the node's, the later) may have
    lost some, so the amend is ``event_pruned`` and nothing reaches the log."""
    s = onesite
    s.worker()
    for api in build_scale_api(s, tmp_path, retention={"raw_events": "3650d"}, reconcile={"lookback": "P30D"}):
        create_meters(api)
        assert api.post_events(EVENTS).status_code in (200, 202, 204)
        check_all(api, EVENTS)
        old = {**EVENTS[0], "time": "2016-01-01T10:00:00Z"}
        body = {"source": "s", "reason": "back in time", "event": old}
        r = api.client.post("/api/v1/events/e1/amend", json=body, headers=api.headers())
        assert r.status_code == 409 and r.json()["code"] == "event_pruned", r.text
        assert [v["action"] for v in history(api, "e1")["history"]] == ["ingest"]
        check_all(api, EVENTS)


def test_the_built_in_bytes_meter_follows_corrections_as_embedded(fixsite: Site, tmp_path: Path) -> None:
    """``ingested_bytes`` counts the versions that count: a void takes its event's bytes out of
    its hour, an amend puts the amended version's in, in both modes alike."""
    on = {"metering": {"ingested_bytes": True}}
    answers = []
    for build in (lambda: build_scale_api(fixsite, tmp_path / "s", **on), lambda: build_api(tmp_path / "e", **on)):
        for api in build():
            r = api.post_events(EVENTS)
            assert r.status_code in (200, 202, 204), r.text
            before = {s: hourly(api, "ingested_bytes", s) for s in ("acme", "beta")}
            corrections(api)
            answers.append((before, {s: hourly(api, "ingested_bytes", s) for s in ("acme", "beta")}))
    (scale_before, scale_after), (embedded_before, embedded_after) = answers
    assert scale_before == embedded_before
    assert scale_after == embedded_after
    assert scale_after != scale_before  # the void and the amends moved it


def _failed(s: Site, *named: str) -> None:
    done = verify(s, "--skip-rollups")
    assert done.returncode == 1, done.stdout + done.stderr
    for part in named:
        assert part in done.stderr, done.stderr


def _passes(s: Site, *args: str) -> str:
    done = verify(s, "--skip-rollups", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _update(conn: Connection, sql: str, seq: int) -> None:
    conn.command(f"ALTER TABLE {sql} SETTINGS mutations_sync = 2", {"q": seq})


def test_verify_checks_the_journal_of_corrections_against_the_chained_entries(onesite: Site, tmp_path: Path) -> None:
    """An amend's and a void's journal row against what their entries carry in the chain (link
    format 2), with embedded mode's messages; a record at an offset that is no correction, an
    entry without its record; the amend's chained record and the link format themselves. Then
    the partition as the previous version left it (format-1 links, no records in the entries):
    it verifies, its amend is counted as not covered, a head exported then holds after this
    version's worker appended a format-2 link, and flipping that link's format fails it."""
    s = onesite
    worker = s.worker()
    conn = Connection(s.config.clickhouse.url, s.config.clickhouse.database)
    pg = psycopg.connect(s.config.postgres.dsn, autocommit=True)
    for api in build_scale_api(s, tmp_path):
        assert (
            api.create_meter(slug="m_sum", eventType="job", aggregation="SUM", valueProperty="$.v").status_code == 201
        )
        assert api.post_events(EVENTS).status_code in (200, 202, 204)
        correct(api, "e2", "void", reason="test traffic")
        correct(api, "e3", "amend", reason="wrong value", event={**EVENTS[2], "data": {"v": "2", "user": "u9"}})
        assert hourly(api, "m_sum", "acme")["2026-03-01T08"] == 5 + 2 + 7  # applied
        (void, _), (amend, _) = conn.rows("SELECT seq, id FROM events WHERE corrects > 0 ORDER BY seq")
        e1, stream = conn.rows("SELECT seq, stream FROM events WHERE id = 'e1'")[0]
        assert "corrections: every record matches its ledger entry (2 records)" in _passes(s)
        of_void = f"the correction record of partition 0 offset {void - 1} (event 'e2' from source 's'"
        of_amend = f"the correction record of partition 0 offset {amend - 1} (event 'e3' from source 's'"
        for edit, seq, named in [
            ("reason = 'customer request'", amend, (of_amend, "differs from the amend entry's original, reason")),
            ("actor = 'someone'", amend, (of_amend, "differs from the amend entry's original, reason or actor")),
            ("reason = 'customer request'", void, (of_void, "differs from the void entry's original, reason")),
            (f"original = {e1}", amend, (of_amend, f"names offset {e1 - 1} as its original, an entry of another")),
            (f"seq = {e1}", amend, (f"the correction record of partition 0 offset {e1 - 1} has no ledger entry",)),
        ]:
            pg.execute("CREATE TEMP TABLE saved AS SELECT * FROM event_corrections")
            pg.execute(f"UPDATE event_corrections SET {edit} WHERE seq = %s", (seq,))
            _failed(s, *named)
            pg.execute("DELETE FROM event_corrections; INSERT INTO event_corrections SELECT * FROM saved")
            pg.execute("DROP TABLE saved")
        pg.execute("CREATE TEMP TABLE saved AS SELECT * FROM event_corrections")
        pg.execute("DELETE FROM event_corrections WHERE seq = %s", (amend,))
        _failed(s, f"partition 0 offset {amend - 1} (event 'e3' from source 's'", "is an amend without its correction")
        pg.execute("INSERT INTO event_corrections SELECT * FROM saved WHERE seq = %s", (amend,))
        pg.execute("DROP TABLE saved")
        _passes(s)
        # the record edited in the journal and in the entry alike: an edit of the chained entry
        pg.execute("UPDATE event_corrections SET reason = 'made up' WHERE seq = %s", (amend,))
        _update(
            conn,
            "events UPDATE correction = replace(correction, 'wrong value', 'made up') WHERE seq = {q:UInt64}",
            amend,
        )
        _failed(s, f"partition 0 offset {amend - 1} (event 'e3' from source 's'", "does not match the chain")
        # its link's format flipped to the one that does not cover the record: the link fails
        _update(conn, "ledger_chain UPDATE format = 1 WHERE has(seqs, {q:UInt64})", amend)
        _failed(s, "names format 1, but the partition's links use format 2 from offset 0 on")

        # The partition as the previous version's worker left it (stopped for the upgrade).
        worker.terminate()
        assert worker.wait(30) == 0
        _update(conn, "events UPDATE correction = '' WHERE corrects > 0 AND seq != {q:UInt64}", 0)
        _rechain(conn, stream, 1)
        head = tmp_path / "heads.json"
        out = _passes(s, "--export-head", str(head))
        assert "the reason and actor of 1 amend(s) are in the journal only" in out, out
        s.worker()  # this version's: a format-2 link after the format-1 ones
        again = {**EVENTS[3], "data": {"v": "1", "user": "u1", "region": "eu"}}
        correct(api, "e4", "amend", reason="late fix", event=again)
        assert hourly(api, "m_sum", "acme")["2026-03-01T08"] == 5 + 2 + 1
        head.write_text(head.read_text().replace("sha256-batch-chain/2", "sha256-batch-chain/1"))
        out = _passes(s, "--against", str(head))  # a head of the previous version holds across the switch
        assert "matches the exported heads of 1 partitions" in out and "1 amend(s) are in the journal only" in out
        newest = conn.rows("SELECT max(seq) FROM events WHERE corrects > 0")[0][0]
        pg.execute("UPDATE event_corrections SET reason = 'customer request' WHERE seq = %s", (newest,))
        _failed(s, f"record of partition 0 offset {newest - 1} (event 'e4'", "differs from the amend entry's")
        pg.execute("UPDATE event_corrections SET reason = 'late fix' WHERE seq = %s", (newest,))
        _passes(s)
        _update(conn, "ledger_chain UPDATE format = 1 WHERE has(seqs, {q:UInt64})", newest)
        _failed(s, f"offset {newest - 1}: the chain link of offsets", "was changed (its hash does not cover what it")
    conn.close()
    pg.close()
