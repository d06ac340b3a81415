"""Property (scale mode): the ClickHouse usage store's TIME_WEIGHTED_SUM answers equal a direct
integration of the readings, whatever order the readings arrive in (small batches, so a later
batch brings readings inside buckets an earlier one wrote: their states interleave), in whole
windows, uneven windows (a DST change), exact ranges, subject and group filters, with levels
ClickHouse integrates and levels too large for its decimals (integrated in Python instead);
and with ``now`` inside the readings, the same answer as the integration in Python alone."""

from __future__ import annotations

import decimal
import os
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count, pairwise
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import msgspec
import pytest
from contract.conftest import CAP, T0_US, Stores, open_stores
from contract.events import LIMITS
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from stack.launch import Stack
from test_property_gauges import integral

from meterline.adapters.clickhouse import gauges, usage
from meterline.domain.events.decode import decode_events, split_body
from meterline.domain.events.model import Status
from meterline.domain.meters.edges import exact_query
from meterline.domain.meters.model import Aggregation, Meter, MeterSpec
from meterline.domain.meters.query import MeterQuery
from meterline.domain.meters.windows import WindowSize
from meterline.services.aggregation import Aggregator

pytestmark = [pytest.mark.heavy]  # the local stack
NS = "default"
HOUR_US = 3600 * 1_000_000
BASE_US = T0_US - 12 * HOUR_US  # 2026-03-01T00:00:00Z: New York's DST change is a week later
SPAN_US = 6 * HOUR_US
WIDE = decimal.Context(prec=200)
NEW_YORK = ZoneInfo("America/New_York")

level_st = st.one_of(
    st.decimals(min_value=-50, max_value=500, places=2, allow_nan=False, allow_infinity=False),
    st.sampled_from([Decimal("1E-30"), Decimal("7E+27"), Decimal("-3E+28")]),
)
reading_st = st.fixed_dictionaries(
    {
        "at": st.integers(-HOUR_US, SPAN_US),  # some before the first window: they carry in
        "coarse": st.booleans(),  # on a whole minute (several readings share buckets and times)
        "subject": st.sampled_from(["acme", "globex"]),
        "disk": st.sampled_from(["a", "b"]),
        "gb": level_st,
    }
)
_run = count()
Series = dict[tuple[str, str], list[tuple[int, int, Decimal]]]


@pytest.fixture(scope="module")
def ch(scale_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    opened = open_stores("clickhouse", tmp_path_factory.mktemp("gauges"), scale_stack)
    yield next(opened)
    opened.close()


@settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "25")),
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # an example takes seconds: no shrinking
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    readings=st.lists(reading_st, min_size=1, max_size=30),
    order=st.randoms(use_true_random=False),
    chunk=st.integers(1, 6),
    cut=st.tuples(st.integers(0, SPAN_US), st.integers(1, SPAN_US)),
    inside=st.integers(0, SPAN_US),
)
def test_scale_gauge_answers_equal_a_direct_integration(
    ch: Stores, readings: list[dict[str, Any]], order: Any, chunk: int, cut: tuple[int, int], inside: int
) -> None:
    run = next(_run)
    meter = ch.meters.create(NS, MeterSpec(f"g{run}", f"disk{run}", Aggregation.TIME_WEIGHTED_SUM,
                                           value_property="$.gb", group_by={"disk": "$.disk"}))  # fmt: skip
    events = []
    for i, r in enumerate(readings):
        at = BASE_US + (r["at"] - r["at"] % 60_000_000 if r["coarse"] else r["at"])
        events.append((f"r{i}", at, r))
    order.shuffle(events)
    series: Series = defaultdict(list)
    for seq, (_, at, r) in enumerate(events):
        series[(r["subject"], r["disk"])].append((at, seq, r["gb"]))
    for points in series.values():
        points.sort()
    _send(ch, meter, run, events)
    Aggregator(ch.ledger, ch.usage, cap=CAP, chunk=chunk).drain()  # small batches, in arrival order

    now = BASE_US + 2 * SPAN_US
    ch.clock._now = now
    hours = [BASE_US + h * HOUR_US for h in range(-1, 8)]
    query = MeterQuery(start=hours[0] // 10**6, end=hours[-1] // 10**6, window_size=WindowSize.HOUR,
                       group_by=("subject",))  # fmt: skip
    read: list[gauges.Integrated | None] = []

    def spy(*args: Any) -> gauges.Integrated | None:
        read.append(gauges.integrated(*args))
        return read[-1]

    with mock.patch.object(usage, "integrated", spy):
        assert _answer(ch, meter, query) == _want(series, hours, now, lambda s, g: (s, ()))
    if all(abs(r["gb"]) <= 500 for r in readings):  # ClickHouse integrated these (not Python)
        assert read and read[0] is not None
    # days in New York across its DST change (a 23-hour day): uneven windows
    days = [int((datetime(2026, 2, 28, tzinfo=NEW_YORK) + timedelta(days=d)).timestamp()) * 10**6 for d in range(11)]
    query = MeterQuery(start=days[0] // 10**6, end=days[-1] // 10**6, window_size=WindowSize.DAY, tz=NEW_YORK,
                       group_by=("disk",))  # fmt: skip
    assert _answer(ch, meter, query) == _want(series, days, now, lambda s, g: (None, (("disk", g),)))
    a, b = BASE_US + min(cut), BASE_US + max(cut) + 1
    query = exact_query(a, b, tz=ZoneInfo("Asia/Kathmandu"))
    assert _answer(ch, meter, query) == _want(series, [a, b], now, lambda s, g: (None, ()))
    query = MeterQuery(start=hours[0] // 10**6, end=hours[-1] // 10**6, window_size=WindowSize.HOUR,
                       subjects=("acme",), filters=(("disk", ("a",), False),))  # fmt: skip
    picked = {k: v for k, v in series.items() if k == ("acme", "a")}
    assert _answer(ch, meter, query) == _want(picked, hours, now, lambda s, g: (s, ()))

    ch.clock._now = BASE_US + inside  # now inside the readings: as the integration in Python alone
    for query in (
        MeterQuery(start=hours[0] // 10**6, end=hours[-1] // 10**6, window_size=WindowSize.HOUR),
        MeterQuery(start=hours[0] // 10**6, end=hours[-1] // 10**6, group_by=("disk", "subject")),
    ):
        got = _answer(ch, meter, query)
        with mock.patch.object(gauges, "SAFE", -1.0):  # every sum "too large": all in Python
            assert got == _answer(ch, meter, query), (query, ch.clock._now, events, chunk)


def _send(ch: Stores, meter: Meter, run: int, events: list[tuple[str, int, dict[str, Any]]]) -> None:
    bodies = []
    for id_, at, r in events:
        stamp = datetime.fromtimestamp(at // 10**6, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{at % 10**6:06d}Z"
        event = {"specversion": "1.0", "id": id_, "source": f"p{run}", "type": meter.spec.event_type,
                 "subject": r["subject"], "time": stamp, "data": {"gb": str(r["gb"]), "disk": r["disk"]}}  # fmt: skip
        bodies.append(msgspec.json.encode(event))
    found = decode_events(split_body(b"[" + b",".join(bodies) + b"]", "batch", 10_000), NS, T0_US, LIMITS)
    outcomes = ch.ledger.append(NS, found).result(10)
    assert [o.status for o in outcomes] == [Status.ACCEPTED] * len(events), outcomes


def _answer(ch: Stores, meter: Meter, query: MeterQuery) -> dict[tuple[Any, ...], Decimal]:
    """(window start, subject, groups): value."""
    rows = ch.usage.query(meter, query)
    return {(r.window_start_us, r.subject, tuple(sorted(r.group_by.items()))): r.value for r in rows}


def _want(series: Series, bounds: list[int], now: int, key: Any) -> dict[tuple[Any, ...], Decimal]:
    """Per window (cut at ``now``) and ``key`` (subject, groups), the sum of the series' integrals."""
    out: dict[tuple[Any, ...], Decimal] = {}
    for a, b in pairwise(bounds):
        if min(b, now) <= a:
            break
        for (subject, disk), points in series.items():
            value = integral(points, a, min(b, now))
            if value is not None:
                slot = (a, *key(subject, disk))
                out[slot] = WIDE.add(out.get(slot, Decimal(0)), value)
    return out
