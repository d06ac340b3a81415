"""Property: a live entitlement counter always equals a naive recomputation from the events.

Random batches of events (duplicates with other payloads, late events, events a little ahead of
the clock, several subjects of the customer and one stranger) interleave with random clock
advances across period boundaries, in several zones and intervals. After every step the value
endpoint's usage must equal the sum of the first-accepted values whose event time lies in the
period the endpoint reports, and a restart must rebuild the same number.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from conftest import T0_US, build_api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.domain.clock import rfc3339

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "15"))

event = st.tuples(
    st.integers(0, 40),  # id from a small pool: duplicates happen
    st.sampled_from(["a1", "a2", "stranger"]),
    st.integers(-3 * 24 * 60, 2),  # minutes relative to now: late, or up to 2 min ahead
    st.integers(-5, 50),  # value
)
step = st.one_of(
    st.tuples(st.just("ingest"), st.lists(event, min_size=1, max_size=8)),
    st.tuples(st.just("advance"), st.integers(1, 40 * 60)),  # minutes
)


def _time(now_us: int, minutes: int) -> str:
    return rfc3339(now_us - now_us % 60_000_000 + minutes * 60_000_000)


def _us(text: str) -> int:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t - datetime(1970, 1, 1, tzinfo=t.tzinfo)) // timedelta(microseconds=1)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    zone=st.sampled_from(["UTC", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe"]),
    interval=st.sampled_from(["DAY", "WEEK", "MONTH", "PT6H"]),
    steps=st.lists(step, min_size=1, max_size=12),
)
def test_counter_equals_naive_recomputation(zone: str, interval: str, steps: list[Any]) -> None:
    with TemporaryDirectory() as tmp:
        gen = build_api(Path(tmp))
        api = next(gen)
        h = api.headers()
        api.create_meter(slug="units", eventType="use", aggregation="SUM", valueProperty="$.n")
        api.client.post(
            "/api/v1/customers", json={"key": "acme", "subjectKeys": ["a1", "a2"], "timezone": zone}, headers=h
        )
        api.client.post("/api/v1/features", json={"key": "units", "name": "Units", "meterSlug": "units"}, headers=h)
        r = api.client.post(
            "/api/v1/customers/acme/entitlements",
            headers=h,
            json={
                "type": "metered",
                "featureKey": "units",
                "issueAfterReset": 100,
                "usagePeriod": {"interval": interval, "anchor": "2026-01-05T00:00:00Z"},
            },
        )
        assert r.status_code == 201, r.text
        accepted: dict[str, tuple[str, int, Decimal]] = {}  # id -> (subject, time_us, value), first wins
        for kind, arg in steps:
            if kind == "advance":
                api.clock.advance(arg * 60)
            else:
                now = api.clock.now_us()
                batch = [
                    {
                        "specversion": "1.0",
                        "id": f"e{i}",
                        "source": "p",
                        "type": "use",
                        "subject": subject,
                        "time": _time(now, minutes),
                        "data": {"n": value},
                    }
                    for i, subject, minutes, value in arg
                ]
                assert api.post_events(batch).status_code == 204
                for e in batch:
                    accepted.setdefault(e["id"], (e["subject"], _us(e["time"]), Decimal(e["data"]["n"])))
            _check(api, accepted)
        now = api.clock.now_us()
        gen.close()
        gen = build_api(Path(tmp))  # restart: counters are rebuilt from the rollups
        api = next(gen)
        api.clock.advance((now - T0_US) // 1_000_000)
        _check(api, accepted)
        gen.close()


def _check(api: Any, accepted: dict[str, tuple[str, int, Decimal]]) -> None:
    v = api.client.get("/api/v1/customers/acme/entitlements/units/value", headers=api.headers()).json()
    start, end = _us(v["period"]["from"]), _us(v["period"]["to"])
    assert start <= api.clock.now_us() < end
    naive = sum(
        (value for subject, t, value in accepted.values() if subject != "stranger" and start <= t < end), Decimal(0)
    )
    assert Decimal(str(v["usage"])) == naive, (v, naive)
