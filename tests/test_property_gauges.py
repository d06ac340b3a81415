"""Property: a TIME_WEIGHTED_SUM meter's answer equals a direct integration of the readings
that count, whatever order the readings arrive in (several requests, late ones among them),
with some voided, the meter created before or after them, in whole windows and exact ranges."""

from __future__ import annotations

import decimal
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count, pairwise
from typing import Any

import msgspec
import pytest
from conftest import Api, build_api
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.adapters.sqlite.rebuild import rebuild
from meterline.adapters.sqlite.schema import connect

BASE = datetime(2026, 3, 7, tzinfo=UTC)
BASE_US = int(BASE.timestamp()) * 1_000_000
SPAN_US = 6 * 3600 * 1_000_000
NOW_US = BASE_US + 2 * 86400 * 1_000_000
BATCH = {"Content-Type": "application/cloudevents-batch+json"}
WIDE = decimal.Context(prec=200)

reading_st = st.fixed_dictionaries(
    {
        "at": st.integers(-3600 * 1_000_000, SPAN_US),  # some before the first window: they carry in
        "coarse": st.booleans(),  # on a whole minute (several readings share buckets and times)
        "subject": st.sampled_from(["acme", "globex"]),
        "disk": st.sampled_from(["a", "b"]),
        "gb": st.decimals(min_value=-50, max_value=500, places=2, allow_nan=False, allow_infinity=False),
    }
)

_run = count()


@pytest.fixture(scope="module")
def prop_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    for api in build_api(tmp_path_factory.mktemp("gauges")):
        api.clock._now = NOW_US
        yield api


def _rfc(us: int) -> str:
    return datetime.fromtimestamp(us // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 1_000_000:06d}Z"


def integral(points: list[tuple[int, int, Decimal]], a: int, b: int) -> Decimal | None:
    """Directly: each reading's level over the overlap of [its time, the next reading's) with
    [a, b); None when the series has no reading before b."""
    if not points or points[0][0] >= b:
        return None
    total = Decimal(0)
    ends = [p[0] for p in points[1:]] + [b]
    for (t, _, level), until in zip(points, ends, strict=True):
        lo, hi = max(t, a), min(until, b)
        if hi > lo:
            total = WIDE.add(total, WIDE.multiply(level, Decimal(hi - lo)))
    return total.scaleb(-6, WIDE)


@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "25")), deadline=None)
@given(
    readings=st.lists(reading_st, min_size=1, max_size=30),
    order=st.randoms(use_true_random=False),
    requests=st.integers(1, 4),
    voided=st.sets(st.integers(0, 29), max_size=6),
    late_meter=st.booleans(),
    cut=st.tuples(st.integers(0, SPAN_US), st.integers(1, SPAN_US)),
)
def test_gauge_answers_equal_a_direct_integration(
    prop_api: Api,
    readings: list[dict[str, Any]],
    order: Any,
    requests: int,
    voided: set[int],
    late_meter: bool,
    cut: tuple[int, int],
) -> None:
    api, run = prop_api, next(_run)
    etype, slug = f"disk{run}", f"g{run}"
    spec = {
        "slug": slug,
        "eventType": etype,
        "aggregation": "TIME_WEIGHTED_SUM",
        "valueProperty": "$.gb",
        "groupBy": {"disk": "$.disk"},
    }
    if not late_meter:
        assert api.create_meter(**spec).status_code == 201
    events = []
    for i, r in enumerate(readings):
        at = BASE_US + (r["at"] - r["at"] % 60_000_000 if r["coarse"] else r["at"])
        data = {"gb": str(r["gb"]), "disk": r["disk"]}
        events.append({"specversion": "1.0", "id": f"r{i}", "source": f"p{run}", "type": etype, "subject": r["subject"],
                       "time": _rfc(at), "data": data, "_at": at})  # fmt: skip
    shuffled = list(events)
    order.shuffle(shuffled)
    seq = {}
    for n in range(requests):  # in several requests: later ones bring readings from before earlier ones
        part = shuffled[n::requests]
        body = [{k: v for k, v in e.items() if k != "_at"} for e in part]
        r = api.client.post("/api/v1/backfills", json=body, headers=api.headers(**BATCH))
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == len(body), r.text
        for e in part:
            seq[e["id"]] = len(seq)
    for i in sorted(voided):
        if i < len(events):
            body = {"source": f"p{run}", "reason": "bad probe"}
            assert api.client.post(f"/api/v1/events/r{i}/void", json=body, headers=api.headers()).status_code == 201
    if late_meter:
        assert api.create_meter(**spec).status_code == 201
    series: dict[tuple[str, str], list[tuple[int, int, Decimal]]] = defaultdict(list)
    for i, e in enumerate(events):
        if i not in voided:
            series[(e["subject"], e["data"]["disk"])].append((e["_at"], seq[e["id"]], Decimal(e["data"]["gb"])))
    for points in series.values():
        points.sort()

    hours = [BASE_US + h * 3600 * 1_000_000 for h in range(-1, 8)]
    want: dict[tuple[int, str], Decimal] = {}
    for a, b in pairwise(hours):
        for (subject, _), points in series.items():
            value = integral(points, a, b)
            if value is not None:
                want[(a, subject)] = want.get((a, subject), Decimal(0)) + value
    params = {"from": _rfc(hours[0]), "to": _rfc(hours[-1]), "windowSize": "HOUR", "groupBy": "subject"}
    got = _answer(api, slug, params, late_meter)
    assert got == want, (got, want)

    a = BASE_US + min(cut[0], cut[1])
    b = BASE_US + max(cut[0], cut[1]) + 1
    exact = [v for points in series.values() if (v := integral(points, a, b)) is not None]
    params = {"from": _rfc(a), "to": _rfc(b), "windowTimeZone": "Asia/Kathmandu"}
    got = _answer(api, slug, params, late_meter)
    assert got == ({(a, None): sum(exact, Decimal(0))} if exact else {})


def _answer(api: Api, slug: str, params: dict[str, str], wait_backfill: bool) -> dict[tuple[int, Any], Decimal]:
    deadline = time.monotonic() + 30
    while wait_backfill and api.client.app.state.system.backend.meters.pending_backfill():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the meter's backfill did not finish"
        time.sleep(0.02)
    r = api.query(slug, params)
    assert r.status_code == 200, r.text
    rows = msgspec.json.Decoder(float_hook=Decimal).decode(r.content)["data"]
    return {(_us(row["windowStart"]), row["subject"]): Decimal(row["value"]) for row in rows}


def _us(text: str) -> int:
    return (datetime.fromisoformat(text) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def test_rebuild_finds_the_gauges_identical(prop_api: Api) -> None:
    """After the property's examples (run first in this module), a rebuild changes nothing."""
    time.sleep(0.1)
    conn = connect(prop_api.data_dir / "meterline.db")
    conn.execute("BEGIN IMMEDIATE")
    try:
        report = rebuild(conn, cap=1000, replace=False)
    finally:
        conn.execute("ROLLBACK")
    assert report.identical, report.differences
