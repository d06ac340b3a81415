"""Meters and queries through the real app: definitions, backfill, windows in zones, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODES, Api, mode_api
from test_ingest_api import assert_problem

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)


@pytest.fixture(params=MODES)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app in each storage mode: these tests hold for both."""
    yield from mode_api(request, tmp_path)


def ev(id_: str, time: str, subject: str = "acme", **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id_,
        "source": "s",
        "type": "gpu",
        "subject": subject,
        "time": time,
        "data": data,
    }


def test_meter_crud_and_openmeter_shape(api: Api) -> None:
    r = api.create_meter(
        slug="gpu_hours",
        eventType="gpu",
        aggregation="SUM",
        valueProperty="$.hours",
        groupBy={"region": "$.region"},
        description="GPU time",
    )
    assert r.status_code == 201
    m = r.json()
    assert len(m["id"]) == 26 and m["slug"] == "gpu_hours" and m["createdAt"] and m["updatedAt"]
    assert m["groupBy"] == {"region": "$.region"} and m["valueProperty"] == "$.hours"
    assert [x["slug"] for x in api.client.get("/api/v1/meters", headers=api.headers()).json()] == ["gpu_hours"]
    assert api.client.get(f"/api/v1/meters/{m['id']}", headers=api.headers()).json()["slug"] == "gpu_hours"
    assert_problem(api.create_meter(slug="gpu_hours", eventType="gpu", aggregation="COUNT"), 409, "meter_exists")
    assert api.client.delete("/api/v1/meters/gpu_hours", headers=api.headers()).status_code == 204
    assert_problem(api.client.get("/api/v1/meters/gpu_hours", headers=api.headers()), 404, "meter_not_found")
    assert api.create_meter(slug="gpu_hours", eventType="gpu", aggregation="COUNT").status_code == 201


@pytest.mark.parametrize(
    "spec",
    [
        {"slug": "Bad-Slug", "eventType": "x", "aggregation": "COUNT"},
        {"slug": "a", "eventType": "x", "aggregation": "SUM"},
        {"slug": "a", "eventType": "x", "aggregation": "COUNT", "valueProperty": "$.v"},
        {"slug": "a", "eventType": "x", "aggregation": "SUM", "valueProperty": "tokens"},
        {"slug": "a", "eventType": "x", "aggregation": "SUM", "valueProperty": "$.items[*]"},
        {"slug": "a", "eventType": "x", "aggregation": "MEDIAN", "valueProperty": "$.v"},
        {"slug": "a", "eventType": "x", "aggregation": "COUNT", "groupBy": {"bad key": "$.k"}},
    ],
)
def test_invalid_meter_definitions(api: Api, spec: dict[str, Any]) -> None:
    body = assert_problem(api.create_meter(**spec), 400, "invalid_meter")
    assert body["detail"].startswith("Invalid meter definition")


def test_every_problem_is_listed(api: Api) -> None:
    body = assert_problem(
        api.create_meter(slug="Bad", eventType="x", aggregation="SUM", groupBy={"b k": "nope"}), 400, "invalid_meter"
    )
    assert len(body["problems"]) == 4


@pytest.mark.embedded_only("a meter created later is not backfilled from the raw table in scale mode yet")
def test_meter_created_later_backfills_from_ledger(api: Api) -> None:
    events = [ev(str(i), "2026-03-01T10:00:00Z", hours=i) for i in range(1, 5)]
    events.append(ev("no-value", "2026-03-01T10:00:00Z"))  # accepted now (no meter yet), skipped later
    assert api.post_events(events).status_code == 204
    assert api.create_meter(slug="h", eventType="gpu", aggregation="SUM", valueProperty="$.hours").status_code == 201
    backend = api.client.app.state.system.backend  # type: ignore[attr-defined]
    for _ in range(500):
        if not backend.meters.pending_backfill():
            break
        import time

        time.sleep(0.01)
    assert [r["value"] for r in api.query("h").json()["data"]] == [10]


def _rows(api: Api, params: list[tuple[str, str]], meter: str = "h") -> list[tuple[str, str, Any]]:
    r = api.query(meter, params)
    assert r.status_code == 200, r.text
    return [(x["windowStart"], x["windowEnd"], x["value"]) for x in r.json()["data"]]


@pytest.fixture
def hours(api: Api) -> Api:
    api.create_meter(
        slug="h", eventType="gpu", aggregation="SUM", valueProperty="$.hours", groupBy={"region": "$.region"}
    )
    api.clock._now = 1_774_000_000_000_000  # 2026-03-20: events below are in the past
    return api


def test_day_windows_across_us_dst(hours: Api) -> None:
    # 2026-03-08 is 23 hours long in New York (clocks jump 02:00 -> 03:00 EST -> EDT).
    events = [
        ev("1", "2026-03-08T04:59:00Z", hours=1),  # 23:59 on the 7th (EST)
        ev("2", "2026-03-08T05:00:00Z", hours=2),  # 00:00 on the 8th
        ev("3", "2026-03-09T03:59:00Z", hours=3),  # 23:59 on the 8th (EDT)
        ev("4", "2026-03-09T04:00:00Z", hours=4),
    ]  # 00:00 on the 9th
    assert hours.post_events(events).status_code == 204
    rows = _rows(
        hours,
        [
            ("from", "2026-03-07T05:00:00Z"),
            ("to", "2026-03-10T04:00:00Z"),
            ("windowSize", "DAY"),
            ("windowTimeZone", "America/New_York"),
        ],
    )
    assert rows == [
        ("2026-03-07T05:00:00.000Z", "2026-03-08T05:00:00.000Z", 1),
        ("2026-03-08T05:00:00.000Z", "2026-03-09T04:00:00.000Z", 5),
        ("2026-03-09T04:00:00.000Z", "2026-03-10T04:00:00.000Z", 4),
    ]


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        ("Asia/Kolkata", "2026-03-01T10:30:00.000Z"),
        ("Asia/Kathmandu", "2026-03-01T11:15:00.000Z"),
        ("UTC", "2026-03-01T11:00:00.000Z"),
    ],
)
def test_hour_windows_in_offset_zones(hours: Api, zone: str, start: str) -> None:
    assert hours.post_events([ev("1", "2026-03-01T11:20:00Z", hours=7)]).status_code == 204
    rows = _rows(
        hours,
        [
            ("from", "2026-03-01T00:00:00Z"),
            ("to", "2026-03-02T00:00:00Z"),
            ("windowSize", "HOUR"),
            ("windowTimeZone", zone),
        ],
    )
    assert [(r[0], r[2]) for r in rows] == [(start, 7)]


def test_month_windows_in_zone(hours: Api) -> None:
    events = [ev("1", "2026-02-28T23:30:00Z", hours=1), ev("2", "2026-03-01T00:30:00Z", hours=2)]
    assert hours.post_events(events).status_code == 204
    rows = _rows(
        hours,
        [
            ("from", "2026-01-31T15:00:00Z"),
            ("to", "2026-03-31T15:00:00Z"),
            ("windowSize", "MONTH"),
            ("windowTimeZone", "Asia/Tokyo"),
        ],
    )
    # both events fall in March in Tokyo (+09:00): 2026-03-01 08:30 and 09:30 local
    assert rows == [("2026-02-28T15:00:00.000Z", "2026-03-31T15:00:00.000Z", 3)]


def test_group_by_subject_filters_and_csv(hours: Api) -> None:
    events = [
        ev("1", "2026-03-01T10:00:00Z", "acme", hours=1, region="eu"),
        ev("2", "2026-03-01T10:00:00Z", "acme", hours=2, region="us"),
        ev("3", "2026-03-01T10:00:00Z", "globex", hours=4, region="eu"),
    ]
    assert hours.post_events(events).status_code == 204
    r = hours.query("h", [("groupBy", "subject"), ("groupBy", "region")]).json()["data"]
    assert [(x["subject"], x["groupBy"], x["value"]) for x in r] == [
        ("acme", {"region": "eu"}, 1),
        ("acme", {"region": "us"}, 2),
        ("globex", {"region": "eu"}, 4),
    ]
    r = hours.query("h", [("subject", "acme"), ("filterGroupBy[region]", "eu")]).json()["data"]
    assert [(x["subject"], x["value"]) for x in r] == [("acme", 1)]
    r = hours.query("h", [("filterGroupBy[subject]", "globex")]).json()["data"]
    assert [(x["subject"], x["value"]) for x in r] == [(None, 4)]
    r = hours.query("h", [("advancedMeterGroupByFilters", '{"region": {"$ne": "eu"}}')]).json()["data"]
    assert [x["value"] for x in r] == [2]
    csv = hours.query("h", [("groupBy", "region")], Accept="text/csv").text.splitlines()
    assert csv[0] == "window_start,window_end,subject,region,value"
    assert [line.split(",")[-2:] for line in csv[1:]] == [["eu", "5"], ["us", "2"]]
    r = hours.client.post(
        "/api/v1/meters/h/query",
        json={"groupBy": ["region"], "filterGroupBy": {"region": ["us"]}},
        headers=hours.headers(),
    )
    assert [x["value"] for x in r.json()["data"]] == [2]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"from": "yesterday"}, "invalid_time"),
        ({"from": "2026-03-01T10:00:00"}, "invalid_time"),
        ({"windowSize": "WEEK"}, "invalid_window_size"),
        ({"windowTimeZone": "Mars/Olympus"}, "invalid_time_zone"),
        ({"groupBy": "colour"}, "invalid_group_by"),
        ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "invalid_range"),
        ({"advancedMeterGroupByFilters": '{"region": {"$like": "e%"}}'}, "unsupported_filter"),
    ],
)
def test_query_errors(hours: Api, params: dict[str, str], code: str) -> None:
    assert_problem(hours.query("h", params), 400, code)


def test_query_unknown_meter(api: Api) -> None:
    assert_problem(api.query("nope"), 404, "meter_not_found")


@pytest.mark.embedded_only("rebuilds the embedded rollups from the SQLite ledger")
def test_large_and_fractional_sums_stay_exact_and_rebuild_identically(hours: Api) -> None:
    # Whole values just under 2**62 in separate hours: their native SQLite sum overflows and the
    # query falls back to exact decimals; fractional values are stored as canonical text.
    big = 2**62 - 1
    events = [
        ev(str(i), f"2026-03-01T1{i}:00:00Z", hours=v)
        for i, v in enumerate([big, big, big, "0.25", "-0.25", "2.50", 1])
    ]
    assert hours.post_events(events).status_code == 204
    from decimal import Decimal

    import msgspec

    day = [("from", "2026-03-01T00:00:00Z"), ("to", "2026-03-02T00:00:00Z")]
    for params in (day, [*day, ("windowSize", "HOUR")], [*day, ("windowSize", "DAY")]):
        rows = msgspec.json.Decoder(float_hook=Decimal).decode(hours.query("h", params).content)["data"]
        assert sum(Decimal(r["value"]) for r in rows) == 3 * big + Decimal("3.5")
    from meterline.adapters.sqlite.rebuild import rebuild
    from meterline.adapters.sqlite.schema import connect

    conn = connect(hours.data_dir / "meterline.db")
    conn.execute("BEGIN IMMEDIATE")
    assert rebuild(conn, cap=1000, replace=False).identical
    conn.execute("ROLLBACK")


def test_meter_wide_sums_over_days_fall_back_to_exact_decimals_on_overflow(hours: Api) -> None:
    # Meter-wide, SQLite folds the summary rows of each window natively (per_subject.fold_wide):
    # three day rows of whole values just under 2**62 overflow that sum, and the query reads the
    # rows one by one instead; in New York the days are hour rows, folded per window the same way.
    big = 2**62 - 1
    events = [ev(f"w{d}", f"2026-03-0{d}T12:00:00Z", hours=big) for d in (1, 2, 3)]
    events += [ev(f"x{d}", f"2026-03-0{d}T13:00:00Z", hours=d) for d in (4, 5)]
    assert hours.post_events(events).status_code == 204
    from decimal import Decimal

    import msgspec

    decode = msgspec.json.Decoder(float_hook=Decimal).decode
    for zone, start, end in (
        ("UTC", "2026-03-01T00:00:00Z", "2026-03-06T00:00:00Z"),
        ("America/New_York", "2026-03-01T05:00:00Z", "2026-03-06T05:00:00Z"),
    ):
        whole = [("from", start), ("to", end), ("windowTimeZone", zone)]
        rows = decode(hours.query("h", whole).content)["data"]
        assert [Decimal(str(r["value"])) for r in rows] == [3 * big + 9], zone
        days = decode(hours.query("h", [*whole, ("windowSize", "DAY")]).content)["data"]
        assert [Decimal(str(r["value"])) for r in days] == [big, big, big, 4, 5], zone


def test_per_subject_sums_over_days_fall_back_to_exact_decimals_on_overflow(hours: Api) -> None:
    # Per subject over whole days, SQLite folds the day rows natively (per_subject.py): three
    # whole values just under 2**62 on three days overflow that sum, and the query reads the
    # rows one by one instead; fractional values are summed exactly beside whole ones, and
    # another subject's small values are answered from the same statement.
    big = 2**62 - 1
    events = [ev(f"b{d}", f"2026-03-0{d}T12:00:00Z", hours=big) for d in (1, 2, 3)]
    events += [ev(f"f{i}", f"2026-03-04T1{i}:00:00Z", hours="0.25") for i in range(3)]
    events += [ev(f"s{d}", f"2026-03-0{d}T08:00:00Z", subject="small", hours=d) for d in (1, 2, 3)]
    assert hours.post_events(events).status_code == 204
    from decimal import Decimal

    import msgspec

    for zone, start, end in (
        ("UTC", "2026-02-28T00:00:00Z", "2026-03-05T00:00:00Z"),
        ("America/New_York", "2026-02-28T05:00:00Z", "2026-03-05T05:00:00Z"),
    ):
        params = [("from", start), ("to", end), ("groupBy", "subject"), ("windowTimeZone", zone)]
        got = hours.query("h", params)
        assert got.status_code == 200, got.text
        rows = msgspec.json.Decoder(float_hook=Decimal).decode(got.content)["data"]
        values = {r["subject"]: Decimal(str(r["value"])) for r in rows}
        assert values == {"acme": 3 * big + Decimal("0.75"), "small": 6}, zone
        small = hours.query("h", [*params, ("subject", "small")])
        assert [Decimal(str(r["value"])) for r in small.json()["data"]] == [6]
