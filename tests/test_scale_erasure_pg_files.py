"""Erasure of a subject in scale mode leaves nothing of it in PostgreSQL's files: a private
PostgreSQL cluster of this test session (``initdb`` + ``pg_ctl``) holds the catalog of a site on
the scale stack (Kafka protocol, ClickHouse, Redis). Before the erasure every file under the
cluster's ``base/`` is searched and the subject, its event ids and a payload string are found;
after it (the tables the erasure changed rewritten with ``VACUUM FULL``, a checkpoint taken)
none is, in any table, index or statistics file (those of ``dedupe_keys``, which is not
rewritten, included: it holds keyed hashes only). Deleting rows alone leaves them in the files
(``test_deleted_rows_stay_in_the_files_until_rewritten``): what the search finds missing is the
rewrite's doing. A table whose lock stays busy is reported (record, ``/readyz`` METER-008) and
rewritten by a later try."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Api, build_scale_api
from postgres_server import Cluster, files_holding, fresh_schema, private_cluster
from scale_site import Site, site
from stack.launch import Stack
from test_billing_api import ev, get, move_to, ok, post, run
from test_scale_chain import verify
from test_scale_erasure import EMAIL, IDS, SUBJECT, answers, ingest, killed, setup, unfinished, value, zora

from meterline import bootstrap_scale
from meterline.adapters.postgres.compaction import PgCatalogFiles
from meterline.adapters.postgres.database import PgDatabase

pytestmark = pytest.mark.heavy

RUN = uuid.uuid4().hex[:8]
HELD = [f"evt-held-{RUN}-{i}" for i in range(2)]
"""Events of the subject quarantined (no customer claimed it yet), then released."""


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with private_cluster() as c:
        yield c


def checkpoint(c: Cluster) -> None:
    """Every change in the server's buffers written to the files (what a search reads)."""
    with psycopg.connect(c.dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def held_in_files(c: Cluster, words: list[str]) -> dict[str, list[str]]:
    """Per word, the files under ``base/`` holding it (as ``base/<db>/<file>``: tables,
    indexes, TOAST, free space and visibility maps, the statistics), after a checkpoint."""
    checkpoint(c)
    return {w: [f"base/{f}" for f in files] for w, files in files_holding(c.data / "base", words).items()}


def file_of(conn: psycopg.Connection[Any], relation: str) -> str:
    row = conn.execute("SELECT pg_relation_filepath(%s)", (relation,)).fetchone()
    assert row is not None
    return str(row[0])


def test_deleted_rows_stay_in_the_files_until_rewritten(cluster: Cluster) -> None:
    """Rows deleted (and a plain VACUUM run) are still in the table's and its indexes' files,
    and in the statistics of the table (``pg_statistic``) once it was analyzed; the rewrite
    removes them. A lock held on a table makes its rewrite ``busy``; a transaction
    that may still see the deleted rows makes it ``held`` (they are copied): both leave the bytes."""
    needle = f"needle-{uuid.uuid4().hex}"
    with fresh_schema(cluster.dsn) as dsn:
        db = PgDatabase(dsn, max_size=2)
        try:
            with db.tx() as conn:
                token = (f"t-{needle}", needle)
                conn.execute("INSERT INTO portal_tokens VALUES (%s, 'ns', %s, NULL, 0, 1, NULL)", token)
                conn.execute("INSERT INTO customer_subjects VALUES ('ns', %s, 'c1')", (needle,))
                conn.execute(
                    "INSERT INTO customer_subjects SELECT 'ns', 'other-' || g, 'c1' FROM generate_series(1, 100) g"
                )
            with db.tx() as conn:
                conn.execute("ANALYZE customer_subjects")  # its statistics sample the subjects
            with psycopg.connect(dsn, autocommit=True) as old, psycopg.connect(dsn, autocommit=True) as other:
                old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                old.execute("SELECT 1")  # its snapshot (taken now) sees the rows deleted next
                with db.tx() as conn:
                    conn.execute("DELETE FROM portal_tokens")
                    conn.execute("DELETE FROM customer_subjects WHERE subject = %s", (needle,))
                other.execute("VACUUM portal_tokens")
                other.execute("VACUUM customer_subjects")
                wanted = {file_of(other, t) for t in ("portal_tokens", "customer_subjects_pkey", "pg_statistic")}
                assert wanted <= set(held_in_files(cluster, [needle])[needle])
                files = PgCatalogFiles(dsn)
                with files.rewriting() as rewriter:
                    assert rewriter is not None
                    with files.rewriting() as second:
                        assert second is None  # one process rewrites at a time
                    assert rewriter.rewrite("portal_tokens", 1.0) == "held"
                    old.execute("COMMIT")
                    other.execute("BEGIN")
                    other.execute("LOCK TABLE customer_subjects IN ACCESS SHARE MODE")
                    assert rewriter.rewrite("customer_subjects", 0.1) == "busy"
                    assert needle in held_in_files(cluster, [needle])
                    other.execute("COMMIT")
                    outcomes = {table: rewriter.rewrite(table, 1.0) for table in files.tables}
            assert outcomes == dict.fromkeys(files.tables, "rewritten")
            assert held_in_files(cluster, [needle]) == {}
        finally:
            db.close()


@pytest.fixture(scope="module")
def pg_site(scale_stack: Stack, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A site on the scale stack whose catalog is in the private cluster, with one worker."""
    extra = "\n[aggregation]\nmax_wait = 60.0\n"
    with site(scale_stack, tmp_path_factory.mktemp("pg-files", numbered=True), extra=extra, postgres=cluster.dsn) as s:
        s.worker()
        yield s


@pytest.fixture
def api(pg_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setattr(bootstrap_scale, "ERASURE_RESUME_EVERY", 3600.0)  # the test says when
    gen = build_scale_api(pg_site, tmp_path / "api", billing={"scheduler_enabled": False})
    yield next(gen)
    gen.close()


def seed(api: Api) -> dict[str, bytes]:
    """The subject's events quarantined then released, applied, amended and voided, a dead
    letter and a portal token of it; March invoiced (the invoices' bodies, by number)."""
    move_to(api, "2026-03-03T00:00:00Z")
    ok(api.client.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}, headers=api.headers()))
    held = [{**zora(0, "2026-03-01T09:00:00Z", 2), "id": i} for i in HELD]
    r = api.post_events(held, Prefer="return=representation")
    assert [e["status"] for e in ok(r)["events"]] == ["quarantined", "quarantined"], r.text
    setup(api)  # the customer claims the subject: the held events are released into the log
    ingest(api)  # and one rejected: a dead letter naming the subject
    answers(api)
    amended = {"type": "request", "subject": SUBJECT, "time": "2026-03-01T12:30:00Z"}
    amended["data"] = {"calls": 6, "region": "eu", "endpoint": "/x", "email": EMAIL}
    r = post(api, f"/api/v1/events/{IDS[0]}/amend", {"source": "t", "reason": "wrong hour", "event": amended})
    assert r.status_code == 201, r.text
    r = post(api, f"/api/v1/events/{IDS[1]}/void", {"source": "t", "reason": f"test traffic of {EMAIL}"})
    assert r.status_code == 201, r.text
    ok(post(api, "/api/v1/portal/tokens", {"subject": SUBJECT}))
    move_to(api, "2026-04-01T00:01:00Z")
    numbers: list[str] = run(api)["created"]
    assert numbers
    return {n: get(api, f"/api/v1/invoices/{n}").content for n in numbers}


def test_an_erasure_leaves_nothing_of_the_subject_in_the_catalogs_files(
    api: Api, pg_site: Site, cluster: Cluster
) -> None:
    invoices = seed(api)
    before = {"answers": answers(api), "value": value(api)}
    dsn = pg_site.config.postgres.dsn
    words = [SUBJECT, EMAIL, *IDS, *HELD]
    found = held_in_files(cluster, words)
    # the files hold them before, but for the ids only the dedupe store has (events neither
    # corrected, held nor rejected): its rows hold keyed hashes only, in no file
    assert set(found) == set(words) - {IDS[2], IDS[3]}, found
    record = ok(post(api, "/api/v1/erasures", {"subject": SUBJECT, "reason": "GDPR request #12"}), 201)
    counts = record["counts"]
    assert counts["quarantined"] == 2 and counts["deadLetters"] == 1 and counts["portalTokens"] == 1, counts
    assert counts["corrections"] == 2 and counts["customerMappings"] == 1, counts
    tables = record["postgresFiles"]
    assert tables == dict.fromkeys(PgCatalogFiles.tables, "rewritten"), tables
    assert held_in_files(cluster, words) == {}  # every file, dedupe_keys' (not rewritten) too
    assert answers(api) == before["answers"] and value(api) == before["value"]
    for number, body in invoices.items():
        assert get(api, f"/api/v1/invoices/{number}").content == body
    assert ok(get(api, "/api/v1/erasures"))["items"][0] == record
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT step, rewrite_due FROM erasures WHERE id = %s", (record["id"],)).fetchone()
    assert row == (7, False)
    done = verify(pg_site)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_busy_table_is_reported_and_rewritten_by_a_later_try(
    pg_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction holds a lock on ``dead_letters`` through every try: the record says
    ``busy``, ``/readyz`` warns METER-008 and the erasure stays due; once the lock is gone, the
    node's next look rewrites it and the warning clears."""
    subject = f"lena.person-{RUN}"
    monkeypatch.setattr(bootstrap_scale, "ERASURE_RESUME_EVERY", 3600.0)
    erasure = {"rewrite_lock_timeout": 0.05, "rewrite_attempts": 2, "rewrite_backoff": 0.01}
    for api in build_scale_api(pg_site, tmp_path / "api", erasure=erasure):
        ok(api.create_meter(slug="m", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
        r = api.post_events([ev(f"evt-lena-{RUN}", subject, "2026-03-01T10:00:00Z", calls=3)])
        assert r.status_code in (200, 202, 204), r.text
        assert [row["value"] for row in ok(api.query("m", [("subject", subject)]))["data"]] == [3]
        with psycopg.connect(pg_site.config.postgres.dsn, autocommit=True) as locker:
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE dead_letters IN ROW EXCLUSIVE MODE")  # as an insert holds it
            record = ok(post(api, "/api/v1/erasures", {"subject": subject, "reason": "GDPR"}), 201)
            assert record["postgresFiles"]["dead_letters"] == "busy", record
            assert record["postgresFiles"]["quarantine"] == "rewritten", record
            ready = api.client.get("/readyz").json()
            warned = {w["check"]: w for w in ready["warnings"]}
            assert warned["erasure_files"]["operationalCode"] == "METER-008", ready
            assert "dead_letters (busy)" in warned["erasure_files"]["detail"], ready
            locker.execute("COMMIT")
        monkeypatch.setattr(bootstrap_scale, "ERASURE_RESUME_EVERY", 0.2)  # the node below looks at once
        for later in build_scale_api(pg_site, tmp_path / "later"):
            later.key = api.key
            deadline = time.monotonic() + 60
            while (item := ok(get(later, "/api/v1/erasures"))["items"][0])["postgresFiles"]["dead_letters"] == "busy":
                assert time.monotonic() < deadline, item
                time.sleep(0.2)
            assert set(item["postgresFiles"].values()) == {"rewritten"}, item
            warnings: Any = later.client.get("/readyz").json()["warnings"]
            assert all(w["check"] != "erasure_files" for w in warnings), warnings


def test_a_rewrite_cut_short_by_a_crash_is_finished_by_the_next_node(
    pg_site: Site, cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node erasing dies after the finish, with one table rewritten: the erasure is
    finished (the workers go on) and still due; the files of the tables not rewritten hold the
    subject; a node that starts rewrites them and records it."""
    monkeypatch.setattr(bootstrap_scale, "ERASURE_RESUME_EVERY", 3600.0)
    dsn = pg_site.config.postgres.dsn
    for api in build_scale_api(pg_site, tmp_path / "api"):
        ok(api.create_meter(slug="m", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
        ok(post(api, "/api/v1/customers", {"key": "initech", "subjectKeys": [SUBJECT]}), 201)
        r = api.post_events([zora(i, f"2026-03-01T0{i}:00:00Z", i + 1) for i in range(2)])
        assert r.status_code in (200, 202, 204), r.text
        assert [row["value"] for row in ok(api.query("m", [("filterCustomerId", "initech")]))["data"]] == [3]
        ok(post(api, "/api/v1/portal/tokens", {"subject": SUBJECT}))
        killed(pg_site, api.key, "mid-tables")
        assert unfinished(pg_site) == []  # finished: nothing holds the workers
        with psycopg.connect(dsn, autocommit=True) as conn:
            due = conn.execute("SELECT id, step FROM erasures WHERE rewrite_due").fetchall()
        assert len(due) == 1 and due[0][1] < 7, due
        assert SUBJECT in held_in_files(cluster, [SUBJECT])
        monkeypatch.setattr(bootstrap_scale, "ERASURE_RESUME_EVERY", 0.2)  # the node below looks at once
        for _ in build_scale_api(pg_site, tmp_path / "later"):
            deadline = time.monotonic() + 60
            while True:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    row = conn.execute("SELECT step, rewrite_due FROM erasures WHERE id = %s", (due[0][0],)).fetchone()
                if row == (7, False) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert row == (7, False)
        assert held_in_files(cluster, [SUBJECT, *IDS[:2]]) == {}
        record = ok(get(api, "/api/v1/erasures"))["items"][0]
        assert set(record["postgresFiles"].values()) == {"rewritten"}, record
        assert [row["value"] for row in ok(api.query("m", [("filterCustomerId", "initech")]))["data"]] == [3]
