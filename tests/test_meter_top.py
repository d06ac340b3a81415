"""Top-K subjects and group values of a meter over a period: the API in both storage modes
(ranked against a hand computation from seeded events, ties, filters, SUM and COUNT totals) and
the CLI against a real server."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODES, Api, mode_api, start_server


@pytest.fixture(params=MODES)
def mapi(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    yield from mode_api(request, tmp_path)


def ev(i: int, subject: str, time: str, **data: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"e{i}", "source": "t", "type": "call", "subject": subject, "time": time,
            "data": data}  # fmt: skip


def seeded() -> list[dict[str, Any]]:
    """200 events over 12 subjects and 4 models on 2026-02-01 and 02-02, seeded."""
    rng = random.Random(12)
    out = []
    for i in range(200):
        day = 1 + i % 2
        time = f"2026-02-0{day}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z"
        subject = f"c{rng.randrange(12)}"
        model = rng.choice(["small", "medium", "large", None])
        data: dict[str, Any] = {"tokens": rng.randrange(1, 500)}
        if model is not None:
            data["model"] = model
        out.append(ev(i, subject, time, **data))
    return out


def top(api: Api, meter: str, **params: str) -> Any:
    got = api.client.get(f"/api/v1/meters/{meter}/top", params=params, headers=api.headers())
    assert got.status_code == 200, got.text
    return got.json()


def by_hand(events: list[dict[str, Any]], key: str, *, count: bool = False, day: str = "") -> Counter[str | None]:
    sums: Counter[str | None] = Counter()
    for e in events:
        if day and not e["time"].startswith(day):
            continue
        k = e["subject"] if key == "subject" else e["data"].get(key)
        sums[k] += 1 if count else e["data"]["tokens"]
    return sums


def ranked(sums: Counter[str | None], k: int) -> list[tuple[str | None, int]]:
    return sorted(sums.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or ""))[:k]


def test_top_subjects_and_values_equal_a_hand_ranking(mapi: Api) -> None:
    api = mapi
    for slug, aggregation in (("tokens", "SUM"), ("calls", "COUNT"), ("peak", "MAX")):
        spec: dict[str, Any] = {"slug": slug, "eventType": "call", "aggregation": aggregation}
        spec["groupBy"] = {"model": "$.model"}
        if aggregation != "COUNT":
            spec["valueProperty"] = "$.tokens"
        assert api.create_meter(**spec).status_code == 201
    events = seeded()
    assert api.post_events(events).status_code in (200, 202, 204)
    span = {"from": "2026-02-01T00:00:00Z", "to": "2026-02-03T00:00:00Z"}

    got = top(api, "tokens", k="5", **span)
    expected = ranked(by_hand(events, "subject"), 5)
    assert [(r["key"], Decimal(str(r["value"]))) for r in got["data"]] == [(k, Decimal(v)) for k, v in expected]
    assert [r["rank"] for r in got["data"]] == [1, 2, 3, 4, 5]
    total = sum(e["data"]["tokens"] for e in events)
    assert Decimal(str(got["total"])) == total
    assert Decimal(str(got["rest"])) == total - sum(v for _, v in expected)
    assert got["candidates"] == len(by_hand(events, "subject"))

    got = top(api, "calls", by="model", k="10", **span)  # every value, and events without one (null)
    expected = ranked(by_hand(events, "model", count=True), 10)
    assert [(r["key"], r["value"]) for r in got["data"]] == expected
    assert got["rest"] == 0 and got["total"] == len(events)

    one_day = {"from": "2026-02-02T00:00:00Z", "to": "2026-02-03T00:00:00Z"}
    got = top(api, "tokens", k="3", **{"filterGroupBy[model]": "large"}, **one_day)
    large = [e for e in events if e["data"].get("model") == "large"]
    assert [(r["key"], r["value"]) for r in got["data"]] == ranked(by_hand(large, "subject", day="2026-02-02"), 3)

    got = top(api, "peak", k="3", **span)  # any aggregation ranks; only SUM and COUNT add up
    peaks: dict[str, int] = {}
    for e in events:
        peaks[e["subject"]] = max(peaks.get(e["subject"], 0), e["data"]["tokens"])
    assert [(r["key"], r["value"]) for r in got["data"]] == ranked(Counter(peaks), 3)
    assert got["total"] is None and got["rest"] is None

    for params, code in (
        ({"k": "0"}, "invalid_parameter"),
        ({"by": "region"}, "invalid_group_by"),
        ({"windowSize": "DAY"}, "invalid_parameter"),
        ({"from": "yesterday"}, "invalid_time"),
    ):
        got_ = api.client.get("/api/v1/meters/tokens/top", params=params, headers=api.headers())
        assert got_.status_code == 400 and got_.json()["code"] == code, got_.text
    missing = api.client.get("/api/v1/meters/nope/top", headers=api.headers())
    assert missing.status_code == 404 and missing.json()["code"] == "meter_not_found"


def test_cli_top_prints_the_ranking(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")  # a real clock: events of two hours ago
    now = datetime.now(UTC)
    hour = (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:05:00Z")
    env = {**os.environ, "METERLINE_URL": server.url, "METERLINE_API_KEY": server.key}
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}) as c:
            spec = {"slug": "tokens", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.tokens"}
            assert c.post("/api/v1/meters", json=spec).status_code == 201
            batch = [ev(i, f"c{i % 3}", hour, tokens=(i % 3 + 1) * 10) for i in range(9)]
            assert c.post("/api/v1/events", json=batch).status_code == 204
        cmd = [sys.executable, "-m", "meterline.cli.main", "top", "tokens", "--from",
               (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), "-k", "2"]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        lines = [ln for ln in out.stdout.splitlines() if " c" in ln]
        assert "c2" in lines[0] and "90" in lines[0] and "c1" in lines[1] and "60" in lines[1], out.stdout
        assert "total 180, the other 1: 30" in out.stdout
        bad = subprocess.run([*cmd[:4], "nope"], capture_output=True, text=True, env=env)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr and "nope" in bad.stderr, bad.stderr
    finally:
        server.stop()
