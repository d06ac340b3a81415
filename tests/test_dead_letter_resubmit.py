"""Dead letters re-submitted by API and CLI after their cause is fixed: exactly once (a second or
a concurrent re-submission counts nothing again), and marked re-submitted with the outcome."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import MODES, Server, mode_server
from scale_site import Site

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
BATCH = {"Content-Type": "application/cloudevents-batch+json"}


def event(id_: str, subject: str, **data: Any) -> dict[str, Any]:
    when = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "specversion": "1.0",
        "id": id_,
        "source": "t",
        "type": "request",
        "subject": subject,
        "time": when,
        "data": data,
    }


@pytest.fixture(params=MODES)
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """An embedded server of its own, or the shared scale-mode API node (a namespace of its own)."""
    yield from mode_server(request, tmp_path)


def client(s: Server, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {key or s.key}"}, timeout=60)


def cli(s: Server, *args: str, status: int = 0) -> str:
    env = {**os.environ, "METERLINE_URL": s.url, "METERLINE_API_KEY": s.key}
    out = subprocess.run([sys.executable, "-m", "meterline.cli.main", *args], capture_output=True, text=True, env=env)
    assert out.returncode == status, out.stdout + out.stderr
    return out.stdout + out.stderr


def letters(c: httpx.Client, state: str = "pending") -> list[dict[str, Any]]:
    r = c.get("/api/v1/dead-letters", params={"state": state, "limit": "1000"})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def count(c: httpx.Client, subject: str) -> Any:
    r = c.get("/api/v1/meters/reqs/query", params={"subject": subject, "from": "2000-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    return sum(row["value"] for row in r.json()["data"])


def create_meter(c: httpx.Client) -> None:
    spec = {"slug": "reqs", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.n"}
    assert c.post("/api/v1/meters", json=spec).status_code == 201


def test_concurrent_resubmissions_count_each_dead_letter_once(served: Server) -> None:
    with client(served) as c:
        create_meter(c)
        assert c.put("/api/v1/settings", json={"unknownSubjects": "reject"}).status_code == 200
        sent = [event(f"n{i}", "newco", n=i + 1) for i in range(40)]
        assert c.post("/api/v1/events", json=sent, headers=BATCH).status_code == 400  # all rejected
        ids = [d["id"] for d in letters(c) if d["eventId"].startswith("n")]
        assert len(ids) == 40
        assert c.post("/api/v1/customers", json={"key": "newco"}).status_code == 201  # the cause, fixed
        answers: list[dict[str, Any]] = []

        def resubmit() -> None:
            with client(served) as own:
                r = own.post("/api/v1/dead-letters/resubmit", json={"ids": ids})
                assert r.status_code == 200, r.text
                answers.append(r.json())

        threads = [threading.Thread(target=resubmit) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(a["accepted"] for a in answers) == 40  # each dead letter once, whoever got it
        assert sum(a["resubmitted"] for a in answers) == 40
        assert sum(len(a["alreadyResubmitted"]) for a in answers) == 3 * 40
        assert count(c, "newco") == sum(range(1, 41))
        assert [d for d in letters(c) if d["eventId"].startswith("n")] == []
        marked = [d for d in letters(c, "resubmitted") if d["eventId"].startswith("n")]
        assert len(marked) == 40 and {d["resubmittedAs"] for d in marked} == {"accepted"}
        again = c.post("/api/v1/dead-letters/resubmit", json={"ids": ids[:3]}).json()
        assert (again["resubmitted"], again["alreadyResubmitted"]) == (0, ids[:3])
        assert count(c, "newco") == sum(range(1, 41))


def test_cli_resubmits_once_and_a_dead_letter_rejected_again_stays_visible(served: Server) -> None:
    with client(served) as c:
        create_meter(c)
        assert c.put("/api/v1/settings", json={"unknownSubjects": "reject"}).status_code == 200
        c.post("/api/v1/events", json=[event("late-co-1", "lateco", n=5)], headers=BATCH)
        c.post("/api/v1/events", json=[event("bad-1", "newco-2", n="many")], headers=BATCH)
        by_event = {d["eventId"]: d for d in letters(c)}
        ok, bad = by_event["late-co-1"]["id"], by_event["bad-1"]["id"]
        assert c.post("/api/v1/customers", json={"key": "lateco"}).status_code == 201
        assert c.post("/api/v1/customers", json={"key": "newco-2"}).status_code == 201
        out = cli(served, "dead-letters", "resubmit", str(ok))
        assert f"dead letter {ok}: accepted" in out
        assert "already re-submitted" in cli(served, "dead-letters", "resubmit", str(ok))
        assert count(c, "lateco") == 5
        # the value still cannot be read: rejected again, a new dead letter with today's reason
        out = cli(served, "dead-letters", "resubmit", str(bad), status=1)
        assert "unreadable_value" in out
        pending = [d for d in letters(c) if d["eventId"] == "bad-1"]
        assert len(pending) == 1 and pending[0]["id"] != bad and pending[0]["reason"] == "unreadable_value"
        old = next(d for d in letters(c, "all") if d["id"] == bad)
        assert old["resubmittedAs"] == "rejected" and old["resubmittedAt"]
        assert f"{ok}" in cli(served, "dead-letters", "list", "--state", "resubmitted")
        assert "not found" in cli(served, "dead-letters", "resubmit", "999999", status=1)
        minted = c.post("/api/v1/keys", json={"name": "reader", "scopes": ["read"]})
        assert minted.status_code == 201, minted.text
        with client(served, minted.json()["key"]) as r:
            assert r.post("/api/v1/dead-letters/resubmit", json={"ids": [bad]}).status_code == 403
        for body in ({"ids": []}, {"ids": [0]}, {"ids": "x"}, {"other": 1}):
            problem = c.post("/api/v1/dead-letters/resubmit", json=body)
            assert problem.status_code == 400 and problem.headers["content-type"].startswith("application/problem+json")
        assert c.get("/api/v1/dead-letters", params={"state": "gone"}).json()["code"] == "invalid_parameter"


@pytest.mark.parametrize("served", ["scale"], indirect=True)
def test_scale_resubmissions_hold_no_connection_while_appending(served: Server, scale_site: Site) -> None:
    """More re-submissions at once than the node's PostgreSQL pool has connections (8): each
    appends through the dedupe store on that pool, so none may hold a connection meanwhile."""
    with client(served) as c:
        create_meter(c)
        assert c.put("/api/v1/settings", json={"unknownSubjects": "reject"}).status_code == 200
        sent = [event(f"p{i}", "poolco", n=i + 1) for i in range(32)]
        assert c.post("/api/v1/events", json=sent, headers=BATCH).status_code == 400
        ids = sorted(d["id"] for d in letters(c) if d["eventId"].startswith("p"))
        assert len(ids) == 32
        assert c.post("/api/v1/customers", json={"key": "poolco"}).status_code == 201
        answers: list[tuple[int, str]] = []
        start = threading.Barrier(16)

        def resubmit(chosen: list[int]) -> None:
            with client(served) as own:
                start.wait()
                r = own.post("/api/v1/dead-letters/resubmit", json={"ids": chosen})
                answers.append((r.status_code, r.text))

        threads = [threading.Thread(target=resubmit, args=(ids[i::16],)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [s for s, _ in answers] == [200] * 16, answers
        assert count(c, "poolco") == sum(range(1, 33))

        # a letter leased by a request still appending (or dead) is waited for, then taken over
        c.post("/api/v1/events", json=[event("held-1", "heldco", n=7)], headers=BATCH)
        held = next(d["id"] for d in letters(c) if d["eventId"] == "held-1")
        assert c.post("/api/v1/customers", json={"key": "heldco"}).status_code == 201
        lease_until = int((time.time() + 1.5) * 1_000_000)
        with psycopg.connect(scale_site.config.postgres.dsn, autocommit=True) as pg:
            pg.execute(
                "UPDATE dead_letters SET resubmit_token = 'another', resubmit_lease_us = %s WHERE id = %s",
                (lease_until, held),
            )
        r = c.post("/api/v1/dead-letters/resubmit", json={"ids": [held]})
        assert r.status_code == 200, r.text
        assert (r.json()["resubmitted"], r.json()["accepted"]) == (1, 1)
        assert count(c, "heldco") == 7
