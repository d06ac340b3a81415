"""Erasure of a subject in scale mode, on the real stack (Kafka protocol, ClickHouse, PostgreSQL):
afterwards no row of any ClickHouse table or PostgreSQL table carries the subject, its event ids or
a payload string, nor (once ClickHouse removed the outdated parts) any file of ClickHouse's data
directory; every meter answer, the entitlement value and the finalized invoices are unchanged;
a resent erased event is a duplicate, with the dedupe store in PostgreSQL or in Redis (no Redis
key or value holds the subject's event ids or digests then); ``meterline verify`` passes (the hash chain keeps the
original digests, the erased rows match their markers); a sink worker that reads the log again from its start
(ClickHouse rebuilt from the log) writes the erased forms, never the subject; events acknowledged
before the request and not applied yet (the worker paused) are erased too; the CLI works against
a real scale-mode node."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from conftest import Api, build_scale_api
from scale_site import Site, site, spawn
from stack.launch import Stack
from test_billing_api import ev, get, move_to, ok, post, run, subscribe
from test_erasure import AGGREGATIONS, PLAN, create_meters
from test_scale_chain import verify

from meterline import bootstrap_scale
from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.fence import PgFence
from meterline.bootstrap import rebuild_scale
from meterline.config import load_config
from meterline.domain.erasure import dedupe_key
from meterline.domain.errors import Conflict

pytestmark = pytest.mark.heavy

RUN = uuid.uuid4().hex[:8]
SUBJECT = f"zora.person-{RUN}"
EMAIL = f"zora.{RUN}@example.org"
IDS = [f"evt-zora-{RUN}-{i}" for i in range(5)]
MARCH = [("from", "2026-03-01T00:00:00Z"), ("to", "2026-04-01T00:00:00Z")]


def needles() -> list[str]:
    return [SUBJECT, EMAIL, *IDS]


def zora(i: int, at: str, calls: int, region: str = "eu") -> dict[str, Any]:
    return ev(IDS[i], SUBJECT, at, calls=calls, region=region, endpoint=f"/v1/e{calls % 3}", email=EMAIL)


def setup(api: Api) -> None:
    create_meters(api)
    ok(post(api, "/api/v1/customers", {"key": "globex", "subjectKeys": ["globex-ops", SUBJECT]}), 201)
    ok(post(api, "/api/v1/features", {"key": "api", "name": "API", "meterSlug": "m_sum"}), 201)
    body = {"type": "metered", "featureKey": "api", "issueAfterReset": 1000, "usagePeriod": {"interval": "YEAR"}}
    ok(post(api, "/api/v1/customers/globex/entitlements", body), 201)
    ok(post(api, "/api/v1/billing/plans", PLAN), 201)
    ok(post(api, "/api/v1/billing/plans/pro/versions/1/publish"))
    subscribe(api, customer="globex")


def ingest(api: Api) -> None:
    events = [
        zora(0, "2026-03-01T10:00:00Z", 5),
        zora(1, "2026-03-01T10:20:00Z", 9, "us"),
        zora(2, "2026-03-02T11:00:00Z", 1),
        zora(3, "2026-03-02T11:30:00Z", 7),
        ev(f"ops-1-{RUN}", "globex-ops", "2026-03-01T10:10:00Z", calls=4, region="eu", endpoint="/v1/e1"),
    ]
    r = api.post_events(events)
    assert r.status_code in (200, 202, 204), r.text
    bad = api.post_events([{**zora(4, "2026-03-02T12:00:00Z", 1), "data": {"calls": "many", "email": EMAIL}}])
    assert bad.status_code in (200, 202, 204, 207, 400), bad.text


def answers(api: Api) -> dict[str, Any]:
    out = {}
    for agg in AGGREGATIONS:
        hourly = [*MARCH, ("windowSize", "HOUR"), ("groupBy", "region")]
        out[agg] = ok(api.query(f"m_{agg.lower()}", hourly))["data"]
        out[agg + "-total"] = ok(api.query(f"m_{agg.lower()}", MARCH))["data"]
        out[agg + "-customer"] = ok(api.query(f"m_{agg.lower()}", [*MARCH, ("filterCustomerId", "globex")]))["data"]
    return out


def value(api: Api) -> Any:
    return ok(get(api, "/api/v1/customers/globex/entitlements/api/value"))


def ch_rows(config_path: Path, database: str | None = None, words: list[str] | None = None) -> dict[str, int]:
    """Per ClickHouse table and column of the site's database, rows holding one of ``words``
    (the needles)."""
    config = load_config(config_path)
    conn = Connection(config.clickhouse.url, database or config.clickhouse.database)
    try:
        columns = conn.rows(
            "SELECT table, name FROM system.columns WHERE database = currentDatabase()"
            " AND (type LIKE '%String%' OR type LIKE 'Array%' OR type LIKE 'Tuple%')"
        )
        found = {}
        for table, column in columns:
            n = conn.rows(
                f"SELECT count() FROM `{table}` WHERE multiSearchAny(toString(`{column}`), {{n:Array(String)}})",
                {"n": needles() if words is None else words},
            )[0][0]
            if n:
                found[f"{table}.{column}"] = int(n)
        return found
    finally:
        conn.close()


def prompt_cleanup(config_path: Path) -> None:
    """Shorten how long ClickHouse keeps the parts that mutations outdate (old_parts_lifetime, 480 s
    by default) and how often it looks for them, on every MergeTree table of the site's database,
    so that the file scan after an erasure need not wait for the defaults."""
    config = load_config(config_path)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    try:
        tables = conn.rows(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"
        )
        for (table,) in tables:
            conn.command(
                f"ALTER TABLE `{table}` MODIFY SETTING old_parts_lifetime = 1,"
                " cleanup_delay_period = 1, cleanup_delay_period_random_add = 1"
            )
    finally:
        conn.close()


def pg_rows(config_path: Path) -> dict[str, int]:
    """Per PostgreSQL table and text, bytea or JSON column of the site's schema, rows holding a needle."""
    dsn = load_config(config_path).postgres.dsn
    found = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND data_type IN ('text', 'bytea', 'jsonb', 'json')"
        ).fetchall()
        for table, column, kind in columns:
            one = (
                f"position(convert_to(%s, 'UTF8') in {column}) > 0"
                if kind == "bytea"
                else f"position(%s in {column}::text) > 0"
            )
            sql = f"SELECT count(*) FROM {table} WHERE {' OR '.join([one] * len(needles()))}"
            n = conn.execute(sql.encode(), needles()).fetchone()
            if n and n[0]:
                found[f"{table}.{column}"] = int(n[0])
    return found


def files_with(root: Path) -> list[str]:
    """Files under ``root`` whose bytes hold one of the needles."""
    out = []
    for folder, _, names in os.walk(root):  # ClickHouse removes parts meanwhile: a vanished one is skipped
        for name in names:
            path = Path(folder) / name
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(n.encode() in data for n in needles()):
                out.append(str(path.relative_to(root)))
    return out


def redis_entries(config_path: Path) -> dict[bytes, dict[bytes, bytes]]:
    """Every key (and its hash) under the site's Redis key prefix."""
    config = load_config(config_path)
    client = redis.Redis.from_url(config.redis.url)
    try:
        names = list(client.scan_iter(match=config.redis.key_prefix + "*", count=1000))
        return {name: client.hgetall(name) for name in names if client.type(name) == b"hash"}
    finally:
        client.close()


def redis_holding(config_path: Path, digests: set[bytes]) -> list[bytes]:
    """Redis keys under the site's prefix whose name or value holds a needle or one of ``digests``."""
    found = []
    for name, fields in redis_entries(config_path).items():
        blob = name + b"".join(fields.values())
        if any(n.encode() in blob for n in needles()) or fields.get(b"d") in digests:
            found.append(name)
    return found


def erasure_secret_of(s: Site) -> bytes:
    with psycopg.connect(s.config.postgres.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'erasure_key'").fetchone()
    assert row is not None
    return bytes.fromhex(str(row[0]))


@contextmanager
def own_site(stack: Stack, root: Path, backend: str) -> Iterator[Site]:
    """A site of its own with one worker, whose API nodes and worker keep the dedupe keys in
    ``backend`` ([dedupe]); Redis's under a key prefix of its own."""
    with site(stack, root, extra="\n[aggregation]\nmax_wait = 60.0\n") as s:
        prefix = f"meterline-test:{uuid.uuid4().hex}:"
        if backend == "redis":
            text = s.config_path.read_text().replace("[redis]\n", f'[redis]\nkey_prefix = "{prefix}"\n')
            s.config_path.write_text(text + '\n[dedupe]\nbackend = "redis"\n')
        s.worker()
        try:
            yield s
        finally:
            client = redis.Redis.from_url(s.config.redis.url)
            for name in client.scan_iter(match=prefix + "*", count=1000):
                client.delete(name)
            client.close()


@pytest.fixture(params=["postgres", "redis"])
def dedupe_site(request: pytest.FixtureRequest, scale_stack: Stack, tmp_path: Path) -> Iterator[Site]:
    """The shared site ("postgres"), or a site of its own with the dedupe store of the
    parameter ("redis", "own-postgres")."""
    if request.param == "postgres":
        yield request.getfixturevalue("scale_site")
        return
    with own_site(scale_stack, tmp_path / "site", request.param.removeprefix("own-")) as s:
        yield s


@pytest.fixture
def billed(dedupe_site: Site, tmp_path: Path) -> Iterator[tuple[Api, dict[str, Any]]]:
    """The subject billed for March, one of its events amended and one voided; what was seen."""
    gen = build_scale_api(dedupe_site, tmp_path / "api", billing={"scheduler_enabled": False})
    api = next(gen)
    try:
        move_to(api, "2026-03-03T00:00:00Z")
        setup(api)
        ingest(api)
        answers(api)  # the workers applied the events (the new meters' backfills too)
        amended = {"type": "request", "subject": SUBJECT, "time": "2026-03-01T12:30:00Z"}
        amended["data"] = {"calls": 6, "region": "eu", "endpoint": "/x", "email": EMAIL}
        r = post(api, f"/api/v1/events/{IDS[0]}/amend", {"source": "t", "reason": "wrong hour", "event": amended})
        assert r.status_code == 201, r.text
        r = post(api, f"/api/v1/events/{IDS[1]}/void", {"source": "t", "reason": f"test traffic of {EMAIL}"})
        assert r.status_code == 201, r.text
        ok(post(api, "/api/v1/portal/tokens", {"subject": SUBJECT}))
        move_to(api, "2026-04-01T00:01:00Z")
        seen = {"answers": answers(api), "value": value(api)}
        numbers = run(api)["created"]
        assert numbers
        seen["invoices"] = {n: get(api, f"/api/v1/invoices/{n}").content for n in numbers}
        yield api, seen
    finally:
        gen.close()


def test_erasure_leaves_no_row_or_file_with_the_subject_and_keeps_every_answer(
    billed: tuple[Api, dict[str, Any]], dedupe_site: Site, scale_stack: Stack
) -> None:
    api, before = billed
    scale_site = dedupe_site
    in_redis = scale_site.config.dedupe.backend == "redis"
    assert ch_rows(scale_site.config_path) and pg_rows(scale_site.config_path), "the needles are found before"
    if in_redis:  # keyed names and digests only, before the erasure too
        entries = redis_entries(scale_site.config_path).items()
        keyed = [n + b"".join(f.values()) for n, f in entries if b":dk:" in n]
        assert len(keyed) >= 4 and not [k for k in keyed for n in needles() if n.encode() in k], keyed
    if not in_redis:
        assert "dedupe_keys" not in " ".join(pg_rows(scale_site.config_path)), "a row holds an id"
    assert files_with(Path(scale_stack.dir) / "clickhouse"), "ClickHouse's files hold the subject before"
    prompt_cleanup(scale_site.config_path)
    record = ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR request #7"}), 201)
    counts = record["counts"]
    assert counts["ledgerEntries"] == 6 and counts["events"] == 4, counts  # 4 events, an amend, a void
    assert counts["deadLetters"] == 1 and counts["portalTokens"] == 1 and counts["customerMappings"] == 1
    assert counts["dedupeKeys"] == 4 and counts["corrections"] == 2 and counts["rollupRows"] > 0
    assert set(record["throughLogPositions"]) == {"0", "1", "2", "3"}
    assert record["throughPosition"] == sum(record["throughLogPositions"].values())
    assert ch_rows(scale_site.config_path) == {}
    assert pg_rows(scale_site.config_path) == {}
    if in_redis:  # no key name holds an event id; the subject's 4 keys are marked erased
        assert redis_holding(scale_site.config_path, set()) == [], "left in Redis"
        marked = [f for f in redis_entries(scale_site.config_path).values() if f.get(b"e") == b"1"]
        assert len(marked) == 4, marked
    assert answers(api) == before["answers"]
    assert value(api) == before["value"]
    for number, body in before["invoices"].items():
        assert get(api, f"/api/v1/invoices/{number}").content == body
    listed = ok(get(api, "/api/v1/erasures"))
    assert listed["items"] == [record]
    again = post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "again"})
    assert again.status_code == 404 and again.json()["code"] == "subject_not_found", again.text
    # resent: duplicates (the amended one compared with the version that counts: a conflict)
    r = api.client.post(
        "/api/v1/backfills",
        json=[zora(2, "2026-03-02T11:00:00Z", 1), zora(3, "2026-03-02T11:30:00Z", 8)],
        headers=api.headers(**{"Content-Type": "application/cloudevents-batch+json"}),
    )
    statuses = [(i["status"], i.get("conflict", False)) for i in ok(r)["events"]]
    assert statuses == [("duplicate", False), ("duplicate", True)], statuses
    assert answers(api) == before["answers"]
    # the hash chain: every link keeps its original digests, the erased rows match their markers
    done = verify(scale_site)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " erased)" in done.stdout and "(0 pruned, 0 erased)" not in done.stdout, done.stdout
    # ClickHouse removes the parts the mutations outdated in the background, after
    # old_parts_lifetime (shortened by prompt_cleanup) and later when its cleanup is busy
    deadline = time.monotonic() + 300
    while (left := files_with(Path(scale_stack.dir) / "clickhouse")) and time.monotonic() < deadline:
        time.sleep(2)
    assert left == []


def test_a_worker_reading_the_log_again_writes_the_erased_forms(scale_stack: Stack, tmp_path: Path) -> None:
    """ClickHouse lost and rebuilt from the log (a new database, the same topic and catalog): the
    records of the erased subject are still in the topic, and the worker writes their erased
    forms from ``erased_entries``; the answers are those from before the erasure."""
    with site(scale_stack, tmp_path / "site", extra="\n[aggregation]\nmax_wait = 60.0\n") as s:
        s.worker()
        gen = build_scale_api(s, tmp_path / "api", billing={"scheduler_enabled": False})
        api = next(gen)
        try:
            move_to(api, "2026-03-03T00:00:00Z")
            setup(api)
            ingest(api)
            before = answers(api)
            ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
            assert answers(api) == before
            key = api.key  # its namespace's (the catalog is shared by the nodes of both configs)
        finally:
            gen.close()
        s.stop()  # the worker
        config = load_config(s.config_path)
        lost = f"{config.clickhouse.database}_again"
        text = s.config_path.read_text().replace(f'database = "{config.clickhouse.database}"', f'database = "{lost}"')
        again = s.config_path.with_name("again.toml")
        again.write_text(text)
        worker = spawn(["worker", "--config", str(again)], s.dir / "again.log")
        try:
            gen = build_scale_api(Site(again, s.dir), tmp_path / "api2", billing={"scheduler_enabled": False})
            api = next(gen)
            try:
                api.key = key
                move_to(api, "2026-03-03T00:00:00Z")
                deadline = time.monotonic() + 90  # this node wrote nothing: it waits for no position
                while (seen := answers(api)) != before and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert seen == before
            finally:
                gen.close()
            assert ch_rows(again, lost) == {}
        finally:
            worker.terminate()
            worker.wait(30)
            conn = Connection(config.clickhouse.url, lost)
            conn.command(f"DROP DATABASE IF EXISTS `{lost}`")
            conn.close()


def test_events_acknowledged_before_the_request_are_erased_though_not_applied_yet(
    scale_site: Site, tmp_path: Path
) -> None:
    """The sink worker is paused: the subject's events are in the log, not in ClickHouse, when
    the erasure is asked for. It waits for the worker (resumed a moment later) and erases them."""
    for api in build_scale_api(scale_site, tmp_path):
        ok(api.create_meter(slug="m", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
        ok(post(api, "/api/v1/customers", {"key": "initech", "subjectKeys": [SUBJECT]}), 201)
        assert ok(api.query("m", MARCH))["data"] == []  # the meter is applied (its backfill done)
        worker = scale_site.processes[0]
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            r = api.post_events([zora(i, f"2026-03-01T0{i}:00:00Z", i + 1) for i in range(4)])
            assert r.status_code in (200, 202, 204), r.text
            resume = threading.Timer(1.5, os.kill, (worker.pid, signal.SIGCONT))
            resume.start()
            record = ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        assert record["counts"]["ledgerEntries"] == 4, record
        q = [*MARCH, ("filterCustomerId", "initech")]
        assert [row["value"] for row in ok(api.query("m", q))["data"]] == [10]
        assert ok(api.query("m", [*MARCH, ("subject", SUBJECT)]))["data"] == []


def test_quarantined_events_leave_no_key_in_either_dedupe_store(dedupe_site: Site, tmp_path: Path) -> None:
    """The subject's quarantined events are deleted by the erasure, and their keys with them, in
    the PostgreSQL or the Redis dedupe store: no row or entry keeps their ids, a correction of
    one is ``event_not_found`` (a confirmed key would pass for an accepted event), and a resend
    is held again."""
    ids = [f"evt-held-{uuid.uuid4().hex}" for _ in range(2)]  # this test's own, whichever site
    held = [{**zora(i, "2026-03-01T10:00:00Z", 5 + i), "id": ids[i]} for i in range(2)]
    for api in build_scale_api(dedupe_site, tmp_path / "api", billing={"scheduler_enabled": False}):
        create_meters(api)
        ok(api.client.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}, headers=api.headers()))
        r = api.post_events(held, Prefer="return=representation")
        assert [e["status"] for e in ok(r)["events"]] == ["quarantined", "quarantined"], r.text
        assert kept_ids(dedupe_site, ids) == set(ids)
        record = ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
        assert (record["counts"]["quarantined"], record["counts"]["dedupeKeys"]) == (2, 2), record
        assert kept_ids(dedupe_site, ids) == set()
        r = post(api, f"/api/v1/events/{ids[0]}/void", {"source": "t", "reason": "x"})
        assert r.status_code == 404 and r.json()["code"] == "event_not_found", r.text
        r = api.post_events(held[:1], Prefer="return=representation")
        assert [e["status"] for e in ok(r)["events"]] == ["quarantined"], r.text  # held again


def kept_ids(s: Site, ids: list[str]) -> set[str]:
    """Which of ``ids`` (source ``t``, of any namespace) the site's dedupe store (PostgreSQL and
    Redis) holds, found by their keyed names (the store holds nothing else of a key)."""
    secret = erasure_secret_of(s)
    with psycopg.connect(s.config.postgres.dsn, autocommit=True) as conn:
        spaces = [str(ns) for (ns,) in conn.execute("SELECT DISTINCT namespace FROM api_keys").fetchall()]
        names = {dedupe_key(secret, ns, "t", i): i for ns in spaces for i in ids}
        rows = conn.execute("SELECT key FROM dedupe_keys WHERE key = ANY(%s::bytea[])", (list(names),)).fetchall()
    found = {names[bytes(r[0])] for r in rows}
    held = redis_entries(s.config_path)
    prefix = load_config(s.config_path).redis.key_prefix.encode()
    return found | {i for name, i in names.items() if prefix + b"dk:" + name.hex().encode() in held}


def test_cli_erase_against_a_scale_node(scale_node: Any, scale_site: Site) -> None:
    """``meterline erase`` and ``meterline erasures`` against a real scale-mode API node."""
    key = scale_site.key(f"n{uuid.uuid4().hex[:10]}")
    with httpx.Client(base_url=scale_node.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        meter = {"slug": "m", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.calls"}
        assert c.post("/api/v1/meters", json=meter).status_code == 201
        hour = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H")  # a real clock's
        events = [zora(i, f"{hour}:0{i}:00Z", i + 1) for i in range(2)]
        r = c.post("/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"})
        assert r.status_code in (200, 202, 204), r.text
    env = {**os.environ, "METERLINE_URL": scale_node.url, "METERLINE_API_KEY": key}
    cli = [sys.executable, "-m", "meterline.cli.main"]
    done = subprocess.run(
        [*cli, "erase", SUBJECT, "--reason", "GDPR", "--yes"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert SUBJECT not in done.stdout and "erased-" in done.stdout
    # the stack's broker reports no retention.ms for a topic meterline created (Tansu)
    assert "the subject's original records leave the Kafka topic unknown" in done.stdout, done.stdout
    assert "PostgreSQL tables rewritten (VACUUM FULL): quarantine, dead_letters" in done.stdout, done.stdout
    listed = subprocess.run([*cli, "erasures"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "GDPR" in listed.stdout, listed.stdout + listed.stderr
    assert "log purged by" in listed.stdout and "postgresql files" in listed.stdout, listed.stdout
    again = subprocess.run(
        [*cli, "erase", SUBJECT, "--reason", "GDPR", "--yes"], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode != 0 and "subject_not_found" in again.stdout + again.stderr


def test_the_same_subject_in_another_namespace_is_untouched(scale_site: Site, tmp_path: Path) -> None:
    """Another namespace's events, corrections and usage under the same subject key stay as they
    were (a corrected hour there is still answered from its raw events under the subject)."""
    for api in build_scale_api(scale_site, tmp_path):
        first, other = api.key, api.new_key(["admin"], "other")
        for key in (first, other):
            api.key = key
            ok(api.create_meter(slug="m", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
            r = api.post_events([zora(i, f"2026-03-01T0{i}:00:00Z", i + 1) for i in range(3)])
            assert r.status_code in (200, 202, 204), r.text
            assert [row["value"] for row in ok(api.query("m", [*MARCH, ("subject", SUBJECT)]))["data"]] == [6]
        r = post(api, f"/api/v1/events/{IDS[0]}/void", {"source": "t", "reason": "test"})  # in `other`
        assert r.status_code == 201, r.text
        hourly = [*MARCH, ("subject", SUBJECT), ("windowSize", "HOUR")]
        before = ok(api.query("m", hourly))["data"]
        assert [row["value"] for row in before] == [2, 3]
        api.key = first
        ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
        assert ok(api.query("m", [*MARCH, ("subject", SUBJECT)]))["data"] == []
        api.key = other
        assert ok(api.query("m", hourly))["data"] == before


APRIL = [("from", "2026-04-01T00:00:00Z"), ("to", "2026-05-01T00:00:00Z")]


def unfinished(s: Site) -> list[tuple[int, int]]:
    """(id, step) of the site's erasures begun and not finished."""
    with psycopg.connect(s.config.postgres.dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT id, step FROM erasures WHERE finished_us IS NULL ORDER BY id").fetchall()
    return [(int(i), int(step)) for i, step in rows]


def killed(s: Site, key: str, point: str) -> None:
    """An erasure of the subject asked of a node that dies (SIGKILL) at ``point`` (killed_erasure.py)."""
    script = Path(__file__).with_name("killed_erasure.py")
    argv = [sys.executable, str(script), str(s.config_path), key, SUBJECT, point]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def values(api: Api, meter: str, params: list[tuple[str, str]]) -> list[Any]:
    return [row["value"] for row in ok(api.query(meter, params))["data"]]


@pytest.fixture
def no_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    """API nodes built from now on look for unfinished erasures only once an hour (so a test
    says which node finishes one, and when)."""
    monkeypatch.setattr(bootstrap_scale, "ERASURE_RESUME_EVERY", 3600.0)


@pytest.mark.parametrize(
    ("dedupe_site", "point"),
    [("own-postgres", "after-copy"), ("own-postgres", "mid-drop"), ("redis", "before-keys"), ("redis", "after-copy")],
    indirect=["dedupe_site"],
)
def test_an_erasure_killed_midway_is_finished_by_a_node_and_loses_no_usage(
    no_resume: None,
    billed: tuple[Api, dict[str, Any]],
    dedupe_site: Site,
    point: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The node erasing dies midway; events are acknowledged meanwhile, of the subject (a new
    life: after the erasure's cut) and of another subject of its customer. The unfinished
    erasure holds the workers (no worker gets a partition), so they apply nothing until a node
    that starts finishes it from the step it reached: then every March answer and the invoices
    are as before, the events sent meanwhile count once (the subject's under the subject, no
    longer the customer's), and nothing of the erased events remains."""
    api, before = billed
    s = dedupe_site
    killed(s, api.key, point)
    assert len(unfinished(s)) == 1, unfinished(s)
    later = [
        ev(f"evt-later-{RUN}", SUBJECT, "2026-04-01T00:00:10Z", calls=3, region="eu", endpoint="/v1/e0"),
        ev(f"ops-2-{RUN}", "globex-ops", "2026-04-01T00:00:20Z", calls=2, region="eu", endpoint="/v1/e0"),
    ]
    r = api.post_events(later)
    assert r.status_code in (200, 202, 204), r.text
    config = load_config(s.config_path)
    db = PgDatabase(config.postgres.dsn, max_size=1)
    try:  # the process that held the workers off is gone; the unfinished erasure still does
        assert PgFence(db, config.postgres.dsn).acquire(f"{config.kafka.topic}:0") is None
    finally:
        db.close()
    with pytest.raises(Conflict, match="erasure of a subject is unfinished"):
        rebuild_scale(config, check=True)  # the originals and the copies stand side by side
    monkeypatch.setattr(bootstrap_scale, "ERASURE_RESUME_EVERY", 0.5)  # the node below looks at once
    for _ in build_scale_api(s, tmp_path / "restarted"):
        deadline = time.monotonic() + 120
        while unfinished(s) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert unfinished(s) == []
    record = ok(get(api, "/api/v1/erasures"))["items"][0]
    assert record["counts"]["ledgerEntries"] == 6 and record["counts"]["dedupeKeys"] == 4, record
    assert answers(api) == before["answers"]
    for number, body in before["invoices"].items():
        assert get(api, f"/api/v1/invoices/{number}").content == body
    assert values(api, "m_sum", [*APRIL, ("subject", SUBJECT)]) == [3]  # a new life, not lost
    assert values(api, "m_sum", [*APRIL, ("filterCustomerId", "globex")]) == [2]
    assert values(api, "m_sum", APRIL) == [5]
    assert ch_rows(s.config_path, words=[EMAIL, *IDS]) == {}
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    try:
        sql = "SELECT DISTINCT id FROM events WHERE subject = {s:String}"
        assert conn.rows(sql, {"s": SUBJECT}) == [(f"evt-later-{RUN}",)]
    finally:
        conn.close()
    assert pg_rows(s.config_path) == {}
    assert all(not any(i.encode() in name for i in IDS) for name in redis_entries(s.config_path))
    r = api.client.post(
        "/api/v1/backfills",
        json=[zora(2, "2026-03-02T11:00:00Z", 1)],
        headers=api.headers(**{"Content-Type": "application/cloudevents-batch+json"}),
    )
    assert [i["status"] for i in ok(r)["events"]] == ["duplicate"]
    done = verify(s)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_erasure_asked_again_after_its_node_died_is_finished_and_answered(
    no_resume: None, scale_site: Site, tmp_path: Path
) -> None:
    """The node erasing dies after the copy; the same erasure asked again (of a node that does
    not look for unfinished ones by itself in this test) finishes it and answers its record."""
    for api in build_scale_api(scale_site, tmp_path):
        ok(api.create_meter(slug="m", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
        ok(post(api, "/api/v1/customers", {"key": "initech", "subjectKeys": [SUBJECT]}), 201)
        r = api.post_events([zora(i, f"2026-03-01T0{i}:00:00Z", i + 1) for i in range(4)])
        assert r.status_code in (200, 202, 204), r.text
        by_customer = [*MARCH, ("filterCustomerId", "initech")]
        assert values(api, "m", by_customer) == [10]
        killed(scale_site, api.key, "after-copy")
        (begun,) = unfinished(scale_site)
        record = ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
        assert record["id"] == begun[0] and record["counts"]["ledgerEntries"] == 4, record
        assert unfinished(scale_site) == []
        assert values(api, "m", by_customer) == [10]
        assert values(api, "m", MARCH) == [10]
        assert ok(api.query("m", [*MARCH, ("subject", SUBJECT)]))["data"] == []


@pytest.mark.parametrize("dedupe_site", ["own-postgres"], indirect=True)
def test_usage_reads_never_count_an_unfinished_erasures_copies(
    no_resume: None, dedupe_site: Site, tmp_path: Path
) -> None:
    """The node erasing dies between the copy and the drop (the subject's usage then stands in
    ClickHouse under the subject and under its pseudonym): another node's reads over every
    subject, by customer and of a meter's subjects wait for the erasure, answer 503
    ``erasure_in_progress`` with Retry-After when it does not finish within their wait, and
    answer as before once a node finished it, a read that waited included. A site of its own:
    no long-lived node of another test finishes the erasure meanwhile."""
    scale_site = dedupe_site
    for api in build_scale_api(scale_site, tmp_path / "a"):
        ok(api.create_meter(slug="m", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
        ok(post(api, "/api/v1/customers", {"key": "initech", "subjectKeys": [SUBJECT]}), 201)
        events = [zora(i, f"2026-03-01T0{i}:00:00Z", i + 1) for i in range(4)]
        events.append(ev(f"other-{RUN}", "other-subject", "2026-03-01T05:00:00Z", calls=7, region="eu"))
        r = api.post_events(events)
        assert r.status_code in (200, 202, 204), r.text
        by_customer = [*MARCH, ("filterCustomerId", "initech")]
        assert values(api, "m", MARCH) == [17] and values(api, "m", by_customer) == [10]
        killed(scale_site, api.key, "after-copy")
        assert len(unfinished(scale_site)) == 1
        with psycopg.connect(scale_site.config.postgres.dsn, autocommit=True) as pg:
            (alias,) = pg.execute("SELECT pseudonym FROM erasures WHERE finished_us IS NULL").fetchone() or ("",)
        config = load_config(scale_site.config_path)
        conn = Connection(config.clickhouse.url, config.clickhouse.database)
        try:  # the copies and the originals side by side: a plain sum counts the subject twice
            sql = (
                "SELECT subject, sum(total) FROM usage_rollups WHERE subject IN ({s:String}, {a:String})"
                " AND meter IN (SELECT meter FROM usage_rollups WHERE subject = {a:String}) GROUP BY ALL"
            )  # the pseudonym is the namespace's own; the subject has rows in other tests' namespaces
            both = {s: int(v) for s, v in conn.rows(sql, {"s": SUBJECT, "a": alias})}
        finally:
            conn.close()
        assert set(both) == {SUBJECT, alias} and len(set(both.values())) == 1, both
        for other in build_scale_api(scale_site, tmp_path / "b", aggregation={"max_wait": 1.0}):
            b = dataclasses.replace(other, key=api.key)  # another node, the same namespace
            for params in (MARCH, by_customer, [*MARCH, ("groupBy", "subject")]):
                r = b.query("m", params)
                assert r.status_code == 503, r.text
                assert r.json()["code"] == "erasure_in_progress" and int(r.headers["Retry-After"]) >= 1, r.text
            r = b.client.get("/api/v1/meters/m/subjects", headers=b.headers())
            assert r.status_code == 503 and r.json()["code"] == "erasure_in_progress", r.text
            waited: list[Any] = []
            reader = threading.Thread(target=lambda a=api, w=waited: w.append(values(a, "m", MARCH)))
            reader.start()  # node a waits (its wait: 60 s) for the erasure to finish
            time.sleep(1.0)
            assert reader.is_alive() and not waited
            record = ok(post(b, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR"}), 201)
            reader.join(120)
            assert waited == [[17]] and record["counts"]["ledgerEntries"] == 4
            assert unfinished(scale_site) == []
            assert values(b, "m", MARCH) == [17] and values(b, "m", by_customer) == [10]
            rows = ok(b.query("m", [*MARCH, ("groupBy", "subject")]))["data"]
            assert sorted((row["subject"], row["value"]) for row in rows) == [(alias, 10), ("other-subject", 7)]
