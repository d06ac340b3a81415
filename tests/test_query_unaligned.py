"""Meter queries over any range: `from`/`to` inside a minute (seconds, milliseconds, as a
JavaScript ``Date`` sends them) are answered exactly, for every aggregation, window size, zone,
group-by and filter, and agree with a naive fold of the events sent."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import T0_US, Api, build_api

from meterline.domain.clock import rfc3339
from meterline.domain.meters.windows import WindowSize, grid

AGGREGATIONS = ["SUM", "COUNT", "AVG", "MIN", "MAX", "LATEST", "UNIQUE_COUNT"]
HOUR_US = 3_600_000_000
START_US = T0_US - 3 * HOUR_US


def _events(rng: random.Random) -> list[dict[str, Any]]:
    events = []
    for i in range(400):
        t = START_US + rng.randrange(3 * HOUR_US - 1_000_000)
        events.append(
            {
                "specversion": "1.0",
                "id": f"e{i}",
                "source": "t",
                "type": "call",
                "subject": rng.choice(["acme", "globex"]),
                "time": rfc3339(t),
                "data": {"n": str(Decimal(rng.randrange(-500, 5000)) / 100), "model": rng.choice(["a", "b", "c"])},
            }
        )
    return events


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, list[dict[str, Any]]]]:
    tmp: Path = tmp_path_factory.mktemp("unaligned")
    for api in build_api(tmp):
        for agg in AGGREGATIONS:
            spec: dict[str, Any] = {"slug": agg.lower(), "eventType": "call", "aggregation": agg}
            if agg != "COUNT":
                spec["valueProperty"] = "$.n"
            spec["groupBy"] = {"model": "$.model"}
            assert api.create_meter(**spec).status_code == 201
        events = _events(random.Random(7))
        assert api.post_events(events).status_code == 204
        yield api, events


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1_000_000)


def _expected(
    agg: str, events: list[dict[str, Any]], start: int, end: int, size: str | None, tz: str, subject: str | None
) -> dict[tuple[str, str, str], Decimal]:
    bounds = list(
        grid(start // 60_000_000 * 60, -(-end // 60_000_000) * 60, WindowSize[size] if size else None, ZoneInfo(tz))
    )
    bounds = [b * 1_000_000 for b in bounds]
    bounds[0], bounds[-1] = start, end
    groups: dict[tuple[int, str], list[tuple[int, Decimal]]] = {}
    for e in events:
        t = _us(e["time"])
        if not start <= t < end or (subject and e["subject"] != subject):
            continue
        w = max(i for i, b in enumerate(bounds[:-1]) if b <= t)
        groups.setdefault((w, e["data"]["model"]), []).append((t, Decimal(e["data"]["n"])))
    out = {}
    for (w, model), items in groups.items():
        out[(rfc3339(bounds[w]), rfc3339(bounds[w + 1]), model)] = _fold(agg, items)
    return out


def _fold(agg: str, items: list[tuple[int, Decimal]]) -> Decimal:
    values = [v for _, v in items]
    if agg == "SUM":
        return sum(values, Decimal(0))
    if agg == "COUNT":
        return Decimal(len(values))
    if agg == "AVG":
        return sum(values, Decimal(0)) / len(values)
    if agg == "MIN":
        return min(values)
    if agg == "MAX":
        return max(values)
    if agg == "LATEST":
        return max(items, key=lambda i: i[0])[1]
    return Decimal(len(set(values)))


CASES = [
    # (offset of from, offset of to) from START_US, in microseconds
    (30_500_000, 7_200_000_000 + 12_345_000),  # seconds and milliseconds, over two hours
    (59_999_000, 61_000_000),  # across one minute boundary
    (90_123_000, 100_456_000),  # within one minute
    (0, 3 * HOUR_US - 1_000),  # aligned from, unaligned to
    (45_000_000, 3 * HOUR_US),  # unaligned from, aligned to
]


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize(("size", "tz"), [(None, "UTC"), ("MINUTE", "UTC"), ("HOUR", "Asia/Kathmandu")])
def test_unaligned_ranges_are_exact(
    seeded: tuple[Api, list[dict[str, Any]]], agg: str, size: str | None, tz: str
) -> None:
    api, events = seeded
    for a, b in CASES:
        for subject in (None, "acme"):
            start, end = START_US + a, START_US + b
            params: dict[str, str] = {
                "from": rfc3339(start),
                "to": rfc3339(end),
                "groupBy": "model",
                "windowTimeZone": tz,
            }
            if size:
                params["windowSize"] = size
            if subject:
                params["subject"] = subject
            r = api.query(agg.lower(), params)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["from"] == rfc3339(start) and body["to"] == rfc3339(end)
            got = {}
            for row in body["data"]:
                got[(row["windowStart"], row["windowEnd"], row["groupBy"]["model"])] = Decimal(str(row["value"]))
            want = _expected(agg, events, start, end, size, tz, subject)
            if agg == "AVG":  # the server divides to 28 significant digits, once per window
                got = {k: round(v, 12) for k, v in got.items()}
                want = {k: round(v, 12) for k, v in want.items()}
            assert got == want, (agg, size, tz, a, b, subject)


def test_post_query_and_filters_take_unaligned_ranges(seeded: tuple[Api, list[dict[str, Any]]]) -> None:
    api, events = seeded
    start, end = START_US + 10_250_000, START_US + 5_000_750_000
    body = {"from": rfc3339(start), "to": rfc3339(end), "filterGroupBy": {"model": "a"}}
    r = api.client.post("/api/v1/meters/sum/query", json=body, headers=api.headers())
    assert r.status_code == 200, r.text
    want = sum(
        (Decimal(e["data"]["n"]) for e in events if start <= _us(e["time"]) < end and e["data"]["model"] == "a"),
        Decimal(0),
    )
    [row] = r.json()["data"]
    assert Decimal(str(row["value"])) == want
    assert row["windowStart"] == rfc3339(start) and row["windowEnd"] == rfc3339(end)


def test_to_not_after_from_is_still_refused(api: Api) -> None:
    assert api.create_meter(slug="m", eventType="call", aggregation="COUNT").status_code == 201
    r = api.query("m", {"from": "2026-03-01T10:00:30.5Z", "to": "2026-03-01T10:00:30.5Z"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_range"
