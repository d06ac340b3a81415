"""Property: for random events (duplicates, late arrivals, several zones and group-bys), every
meter query equals a naive reference computed directly from the events."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from conftest import Api, build_api
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.adapters.sqlite.rebuild import rebuild
from meterline.adapters.sqlite.schema import connect

# Events fall between 2026-03-06 and 2026-03-10 (US DST starts 2026-03-08); the clock sits after.
BASE = datetime(2026, 3, 6, tzinfo=UTC)
SPAN_MIN = 4 * 24 * 60
NOW_US = int((BASE + timedelta(days=5)).timestamp()) * 1_000_000
ZONES = ["UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York", "Europe/Berlin", "Australia/Adelaide"]
AGGS = ["SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST"]
SIZES = [None, "MINUTE", "HOUR", "DAY", "MONTH"]

event_st = st.fixed_dictionaries(
    {
        "id": st.integers(0, 40),
        "subject": st.sampled_from(["acme", "globex", "initech"]),
        "minute": st.integers(0, SPAN_MIN - 1),
        "second": st.integers(0, 59),
        "micro": st.integers(0, 999_999),
        "value": st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False),
        "model": st.sampled_from(["a", "b", "c"]),
        "user": st.sampled_from(["u1", "u2", "u3", "u4"]),
    }
)
query_st = st.fixed_dictionaries(
    {
        "size": st.sampled_from(SIZES),
        "zone": st.sampled_from(ZONES),
        "start": st.one_of(st.none(), st.integers(0, SPAN_MIN)),
        "length": st.integers(1, SPAN_MIN),
        "group_subject": st.booleans(),
        "group_model": st.booleans(),
        "subjects": st.lists(st.sampled_from(["acme", "globex", "initech"]), max_size=2, unique=True),
        "model_filter": st.one_of(st.none(), st.sampled_from(["a", "b"])),
    }
)

_run = count()  # a fresh event type, source and meter slugs per example


@pytest.fixture(scope="module")
def prop_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for every example of the property (each example uses its own event type)."""
    for api in build_api(tmp_path_factory.mktemp("prop")):
        api.clock._now = NOW_US
        yield api


def _to_us(minute: int, second: int = 0, micro: int = 0) -> int:
    return (int(BASE.timestamp()) + minute * 60 + second) * 1_000_000 + micro


def _rfc(us: int) -> str:
    return (
        datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if us % 1_000_000
        else datetime.fromtimestamp(us // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )


def _window_start(t_s: int, size: str | None, tz: ZoneInfo, start: int) -> int:
    if size is None:
        return start
    local = datetime.fromtimestamp(t_s, tz)
    if size == "MINUTE":
        w = t_s - t_s % 60
    elif size == "HOUR":
        w = t_s - local.minute * 60 - local.second
    elif size == "DAY":
        w = int(datetime(local.year, local.month, local.day, tzinfo=tz).timestamp())
    else:
        w = int(datetime(local.year, local.month, 1, tzinfo=tz).timestamp())
    return max(w, start)


def _reference(agg: str, accepted: list[dict[str, Any]], q: dict[str, Any], start: int, end: int) -> dict[Any, Decimal]:
    tz = ZoneInfo(q["zone"])
    groups: dict[Any, list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
    for seq, e in enumerate(accepted):
        t_us = _to_us(e["minute"], e["second"], e["micro"])
        if not start * 1_000_000 <= t_us < end * 1_000_000:
            continue
        if q["subjects"] and e["subject"] not in q["subjects"]:
            continue
        if q["model_filter"] is not None and e["model"] != q["model_filter"]:
            continue
        by_subject = q["group_subject"] or bool(q["subjects"])
        key = (
            _window_start(t_us // 1_000_000, q["size"], tz, start),
            e["subject"] if by_subject else None,
            e["model"] if q["group_model"] else None,
        )
        groups[key].append((t_us, seq, e))
    out = {}
    for key, items in groups.items():
        values = [Decimal(str(e["value"])) for _, _, e in items]
        if agg == "SUM":
            v = sum(values, Decimal(0))
        elif agg == "COUNT":
            v = Decimal(len(items))
        elif agg == "UNIQUE_COUNT":
            v = Decimal(len({e["user"] for _, _, e in items}))
        elif agg == "AVG":
            v = sum(values, Decimal(0)) / len(values)
        elif agg == "MIN":
            v = min(values)
        elif agg == "MAX":
            v = max(values)
        else:
            v = Decimal(str(max(items, key=lambda i: (i[0], i[1]))[2]["value"]))
        out[key] = v
    return out


@settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "40")),
    deadline=None,
)
@given(
    events=st.lists(event_st, max_size=50),
    queries=st.lists(query_st, min_size=1, max_size=4),
    late_meters=st.sets(st.sampled_from(AGGS)),
)
def test_queries_match_naive_reference(
    prop_api: Api, events: list[dict[str, Any]], queries: list[dict[str, Any]], late_meters: set[str]
) -> None:
    api = prop_api
    specs, accepted = ingest(api, events, late_meters)
    for q in queries:
        start = q["start"] if q["start"] is not None else 0
        end = min(start + q["length"], SPAN_MIN)
        if end <= start:
            continue
        params: list[tuple[str, str]] = [
            ("from", _rfc(_to_us(start))),
            ("to", _rfc(_to_us(end))),
            ("windowTimeZone", q["zone"]),
        ]
        if q["size"]:
            params.append(("windowSize", q["size"]))
        params += [("subject", s) for s in q["subjects"]]
        params += [("groupBy", "subject")] if q["group_subject"] else []
        params += [("groupBy", "model")] if q["group_model"] else []
        if q["model_filter"]:
            params.append(("filterGroupBy[model]", q["model_filter"]))
        start_s, end_s = _to_us(start) // 1_000_000, _to_us(end) // 1_000_000
        for agg in AGGS:
            r = api.query(specs[agg]["slug"], params)
            assert r.status_code == 200, r.text
            rows = msgspec.json.Decoder(float_hook=Decimal).decode(r.content)["data"]
            got = {}
            for row in rows:
                ws = int(datetime.fromisoformat(row["windowStart"].replace("Z", "+00:00")).timestamp())
                we = int(datetime.fromisoformat(row["windowEnd"].replace("Z", "+00:00")).timestamp())
                assert start_s <= ws < we <= end_s
                got[(ws, row["subject"], row["groupBy"].get("model"))] = Decimal(row["value"])
            want = _reference(agg, accepted, q, start_s, end_s)
            if agg == "AVG":
                got = {k: round(v, 20) for k, v in got.items()}
                want = {k: round(v, 20) for k, v in want.items()}
            assert got == want, (agg, q)


def ingest(
    api: Api, events: list[dict[str, Any]], late_meters: set[str]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """One meter per aggregation (those in ``late_meters`` created after the events, so they are
    backfilled from the ledger), the events in two requests (duplicates included), backfill
    waited for. Returns the meter specs and the events that count (first payload per id)."""
    run = next(_run)
    etype = f"use{run}"
    specs = {
        agg: {
            "slug": f"m{run}_{agg.lower()}",
            "eventType": etype,
            "aggregation": agg,
            "groupBy": {"model": "$.model"},
            **({} if agg == "COUNT" else {"valueProperty": "$.user" if agg == "UNIQUE_COUNT" else "$.v"}),
        }
        for agg in AGGS
    }
    for agg in AGGS:
        if agg not in late_meters:
            assert api.create_meter(**specs[agg]).status_code == 201
    body = [
        {
            "specversion": "1.0",
            "id": str(e["id"]),
            "source": f"prop{run}",
            "type": etype,
            "subject": e["subject"],
            "time": _rfc(_to_us(e["minute"], e["second"], e["micro"])),
            "data": {"v": str(e["value"]) if e["id"] % 2 else e["value"], "model": e["model"], "user": e["user"]},
        }
        for e in events
    ]
    # Two requests: the second half arrives after the first, duplicates included.
    half = len(body) // 2
    for part in (body[:half], body[half:]):
        if part:
            r = api.client.post(
                "/api/v1/events",
                content=msgspec.json.encode(part),
                headers=api.headers(**{"Content-Type": "application/json"}),
            )
            assert r.status_code == 204, r.text
    accepted, seen = [], set()
    for e in events:  # first payload per id wins
        if e["id"] not in seen:
            seen.add(e["id"])
            accepted.append(e)
    for agg in late_meters:  # created after the events: backfilled from the ledger
        assert api.create_meter(**specs[agg]).status_code == 201
    _wait_backfill(api)
    return specs, accepted


def _wait_backfill(api: Api) -> None:
    backend = api.client.app.state.system.backend  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while backend.meters.pending_backfill() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.meters.pending_backfill() == 0


@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "40")) // 4, deadline=None)
@given(
    batches=st.lists(st.tuples(st.lists(event_st, min_size=1, max_size=50), st.sets(st.sampled_from(AGGS))), max_size=4)
)
def test_rebuild_reproduces_rollups(tmp_path_factory: pytest.TempPathFactory, batches: Any) -> None:
    """Its own data directory, filled like the property above (live and backfilled meters,
    duplicates); a rebuild from the ledger equals the stored rollups, and a changed rollup is found."""
    for api in build_api(tmp_path_factory.mktemp("rebuild")):
        api.clock._now = NOW_US
        counted = sum(len(ingest(api, events, late)[1]) for events, late in batches)
        conn = connect(api.data_dir / "meterline.db")
        try:
            conn.execute("BEGIN IMMEDIATE")
            report = rebuild(conn, cap=1000, replace=False)
            assert report.events == counted and report.identical, report
            if counted:
                key = "meter, level, subject, bucket, group_key"
                conn.execute(f"UPDATE rollups SET cnt = cnt + 1 WHERE ({key}) = (SELECT {key} FROM rollups LIMIT 1)")
                assert rebuild(conn, cap=1000, replace=False).differences["rollups"] == 2
        finally:
            conn.execute("ROLLBACK")
            conn.close()
