"""APPROX_UNIQUE_COUNT: HyperLogLog sketches per rollup bucket, merged for any window.

Against the exact UNIQUE_COUNT of the same values on seeded data (deterministic): every answer
within the documented bound (three standard errors, 4.9 %, or 3 values when that is more) for windows, zones, group-by,
subjects, a partial first minute, late events and voids; sketches that merge exactly; a
rebuild from the ledger that finds the stored sketches byte-identical (also after a kill -9
of a real server in the middle of aggregating); scale mode's answers equal embedded mode's."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Api, build_api, build_scale_api, start_server

from meterline.adapters.sqlite.database import connect
from meterline.adapters.sqlite.rebuild import rebuild
from meterline.domain.meters.sketch import STANDARD_ERROR, Sketch

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

BOUND = 3 * STANDARD_ERROR  # 4.9 %


def within(estimate: float, exact: int) -> bool:
    return abs(estimate - exact) <= max(3.0, BOUND * exact)


def test_estimates_are_within_the_bound_and_merges_are_exact() -> None:
    rng = random.Random(20260301)
    for n in (0, 1, 7, 300, 5_000, 40_000):
        values = [f"user-{rng.getrandbits(64):x}" for _ in range(n)]
        whole = Sketch()
        parts = [Sketch(), Sketch(), Sketch()]
        for i, v in enumerate(values):
            whole.add(v)
            parts[i % 3].add(v)
            parts[i % 3].add(v)  # a value added twice counts once
        assert within(whole.estimate(), n), (n, whole.estimate())
        merged = Sketch()
        for p in (*parts, parts[0]):  # merged twice: nothing changes (idempotent)
            merged.merge(Sketch.from_bytes(p.to_bytes()))
        assert merged.to_bytes() == whole.to_bytes()  # the stored form depends on the values only
        assert Sketch.from_bytes(whole.to_bytes()).estimate() == whole.estimate()


def ev(i: int, subject: str, time: str, user: str, model: str) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"e{i}", "source": "t", "type": "visit", "subject": subject, "time": time,
            "data": {"user": user, "model": model}}  # fmt: skip


def seeded(n: int = 6000, users: int = 3000) -> list[dict[str, Any]]:
    rng = random.Random(12)
    out = []
    for i in range(n):
        day, hour, minute, second = 1 + rng.randrange(2), rng.randrange(24), rng.randrange(60), rng.randrange(60)
        time = f"2026-02-0{day}T{hour:02d}:{minute:02d}:{second:02d}Z"
        out.append(ev(i, rng.choice(["acme", "globex"]), time, f"u{rng.randrange(users)}", rng.choice("ab")))
    return out


WAIT = {"aggregation": {"max_wait": 60}}  # a busy machine: reads wait for the aggregator to catch up


@pytest.fixture
def uapi(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path, **WAIT)


def meters(api: Api) -> None:
    for slug, aggregation in (("exact", "UNIQUE_COUNT"), ("approx", "APPROX_UNIQUE_COUNT")):
        spec = {"slug": slug, "eventType": "visit", "aggregation": aggregation, "valueProperty": "$.user",
                "groupBy": {"model": "$.model"}}  # fmt: skip
        got = api.create_meter(**spec)
        assert got.status_code == 201, got.text


def post(api: Api, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 1000):
        got = api.post_events(events[i : i + 1000])
        assert got.status_code in (200, 204), got.text


def answers(api: Api, slug: str, params: list[tuple[str, str]]) -> dict[tuple[Any, ...], float]:
    got = api.query(slug, params)
    assert got.status_code == 200, got.text
    return {
        (r["windowStart"], r["subject"], tuple(sorted(r["groupBy"].items()))): float(r["value"])
        for r in got.json()["data"]
    }


def compare(api: Api, params: list[tuple[str, str]]) -> int:
    exact, approx = answers(api, "exact", params), answers(api, "approx", params)
    assert set(exact) == set(approx), params
    for key, n in exact.items():
        assert within(approx[key], int(n)), (params, key, n, approx[key])
    return len(exact)


QUERIES: list[list[tuple[str, str]]] = [
    [("from", "2026-02-01T00:00:00Z"), ("to", "2026-02-03T00:00:00Z")],
    [("from", "2026-02-01T00:00:00Z"), ("to", "2026-02-03T00:00:00Z"), ("windowSize", "DAY"),
     ("windowTimeZone", "Asia/Kolkata")],
    [("from", "2026-02-01T00:00:00Z"), ("to", "2026-02-03T00:00:00Z"), ("windowSize", "HOUR"), ("groupBy", "model")],
    [("from", "2026-02-01T00:07:30.5Z"), ("to", "2026-02-02T23:59:10Z"), ("groupBy", "subject"),
     ("windowTimeZone", "Asia/Kathmandu"), ("windowSize", "DAY")],
    [("from", "2026-02-01T00:00:00Z"), ("to", "2026-02-03T00:00:00Z"), ("subject", "acme"), ("windowSize", "DAY"),
     ("filterGroupBy[model]", "a")],
]  # fmt: skip


def test_answers_are_within_the_bound_of_the_exact_count_in_any_window(uapi: Api) -> None:
    api = uapi
    meters(api)
    events = seeded()
    post(api, events)
    rows = sum(compare(api, q) for q in QUERIES)
    assert rows > 100
    whole = answers(api, "approx", QUERIES[0])
    (total,) = whole.values()
    assert within(total, len({e["data"]["user"] for e in events}))

    late = [ev(10_000 + i, "acme", "2026-02-01T05:30:00Z", f"late{i}", "a") for i in range(400)]
    post(api, late)  # late events land in their true hour and every window holding it
    for q in QUERIES:
        compare(api, q)
    assert answers(api, "approx", QUERIES[0])[next(iter(whole))] > total + 300

    for i in range(0, 400, 2):  # voids recompute their hours from the ledger
        got = api.client.post(f"/api/v1/events/e{10_000 + i}/void", json={"source": "t", "reason": "test"},
                              headers=api.headers())  # fmt: skip
        assert got.status_code == 201, got.text
    for q in QUERIES:
        compare(api, q)


def test_rebuild_finds_the_sketches_identical(tmp_path: Path) -> None:
    for api in build_api(tmp_path, **WAIT):
        meters(api)
        post(api, seeded(2000, 500))
        assert compare(api, QUERIES[1]) > 0
        got = api.client.post("/api/v1/events/e3/void", json={"source": "t", "reason": "x"}, headers=api.headers())
        assert got.status_code == 201
        compare(api, QUERIES[2])
    assert_rebuilt(tmp_path / "data")


def assert_rebuilt(data: Path) -> None:
    conn = connect(data / "meterline.db")
    conn.execute("BEGIN IMMEDIATE")
    try:
        report = rebuild(conn, cap=1000, replace=False)
        assert conn.execute("SELECT count(*) FROM sketches").fetchone()[0] > 0
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert report.identical, report.differences


def test_a_killed_server_resumes_and_its_sketches_equal_a_replay(tmp_path: Path) -> None:
    """kill -9 right after ingest answered (the aggregator mid-way): after a restart the
    aggregator resumes from its stored offset (sketch rows and offset move in one
    transaction), and a replay of the ledger gives the same sketch bytes."""
    data = tmp_path / "data"
    server = start_server(data)
    rng = random.Random(7)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}) as c:
            spec = {"slug": "approx", "eventType": "visit", "aggregation": "APPROX_UNIQUE_COUNT",
                    "valueProperty": "$.user"}  # fmt: skip
            assert c.post("/api/v1/meters", json=spec).status_code == 201
            hour = "2026-12-01T00:00:00Z"
            for b in range(4):
                batch = [ev(b * 1000 + i, "acme", hour, f"u{rng.randrange(10**9)}", "a") for i in range(1000)]
                got = c.post("/api/v1/events?backfill=true", json=batch)
                if got.status_code == 400:
                    got = c.post("/api/v1/events", json=batch)
        server.process.kill()
        server.process.wait()
    finally:
        server.stop()
    server = start_server(data)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}) as c:
            got = c.get("/api/v1/meters/approx/query")
            assert got.status_code == 200, got.text
    finally:
        server.stop()
    out = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "rebuild", "--check", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_scale_mode_answers_what_embedded_answers(uapi: Api, scale_site: Any, tmp_path: Path) -> None:
    """The same events through an embedded server and an API node of scale mode (sink workers
    folding the log into ClickHouse's ``usage_sketches``): every APPROX_UNIQUE_COUNT answer is
    the very same number — a sketch is a function of the values only — for windows, zones,
    group-by, filters and partial minutes, for a meter created after the events arrived (its
    backfill) and after late events."""
    events = seeded()
    late = [ev(10_000 + i, "acme", "2026-02-01T05:30:00Z", f"late{i}", "a") for i in range(400)]
    for api in build_scale_api(scale_site, tmp_path / "scale"):
        both = (uapi, api)
        for a in both:
            meters(a)
            post(a, events)
        for q in QUERIES:
            assert answers(api, "approx", q) == answers(uapi, "approx", q), q
        for a in both:  # created after the events: the sink worker backfills it from the raw events
            spec = {"slug": "later", "eventType": "visit", "aggregation": "APPROX_UNIQUE_COUNT",
                    "valueProperty": "$.user", "groupBy": {"model": "$.model"}}  # fmt: skip
            assert a.create_meter(**spec).status_code == 201
            post(a, late)
        for q in QUERIES:
            for slug in ("approx", "later"):
                embedded = answers(uapi, slug, q)
                assert answers(api, slug, q) == embedded, (slug, q)
            compare(api, q)
