"""The UsageStore contract, driven by the real aggregator over the matching ledger: every
aggregation answered exactly in every zone, window size, grouping and filter (late events in
their true window), and a batch applied only together with the offset it was computed from."""

from __future__ import annotations

import dataclasses
import functools
from decimal import Decimal
from functools import reduce
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from stack.launch import Stack

from contract.conftest import CAP, T0_US, Stores, kinds, open_stores
from contract.events import LIMITS
from contract.usage_kit import (
    END,
    NS,
    ZONES,
    Sent,
    answer,
    expected,
    expected_gauge,
    gauge_series,
    history,
    integral,
    queries,
    spec,
    value_of,
)
from meterline.domain.decimals import add
from meterline.domain.events.decode import decode_events, split_body
from meterline.domain.events.model import Status
from meterline.domain.events.size import event_size
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import Replay
from meterline.domain.meters.model import Aggregation, MeterSpec, ingested_bytes_spec
from meterline.domain.meters.query import MeterQuery
from meterline.domain.meters.windows import WindowSize
from meterline.ports.usage import Batch
from meterline.services.aggregation import Aggregator

HISTORY = history()
pytestmark = [pytest.mark.ports("usage", "ledger", "meters"), pytest.mark.heavy]  # heavy: see conftest.py


def send(stores: Stores, events: list[Sent]) -> None:
    body = b"[" + b",".join(e.body() for e in events) + b"]"
    found = decode_events(split_body(body, "batch", 10_000), NS, T0_US, LIMITS)
    outcomes = stores.ledger.append(NS, found).result(10)
    assert [o.status for o in outcomes] == [Status.ACCEPTED] * len(events)


def drain(stores: Stores) -> None:
    Aggregator(stores.ledger, stores.usage, cap=CAP, chunk=7).drain()  # small chunks: many batches


def total(stores: Stores, slug: str) -> Decimal:
    meter = stores.meters.get(NS, slug)
    return sum((r.value for r in stores.usage.query(meter, MeterQuery(start=0, end=END))), Decimal(0))


def aggregations(kind: str) -> list[Aggregation]:
    """The aggregations the ``kind`` usage store keeps: every one, in every store."""
    return list(Aggregation)


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_every_aggregation_zone_window_and_grouping_is_exact(stores: Stores, aggregation: Aggregation) -> None:
    if aggregation not in aggregations(stores.kind):
        pytest.skip(f"the {stores.kind} usage store keeps no {aggregation.value} (its mode refuses such meters)")
    meter = stores.meters.create(NS, spec(aggregation))
    cut = 2 * len(HISTORY) // 3
    send(stores, HISTORY[:cut])
    drain(stores)
    send(stores, HISTORY[cut:])  # many of these are older than events already aggregated
    drain(stores)
    assert stores.usage.snapshot().offset == len(HISTORY) == stores.ledger.position()
    # a gauge's expectation integrates every series over every window: two zones (UTC and a
    # :45 one) keep it to seconds
    for tz in ZONES[:2] if aggregation is Aggregation.TIME_WEIGHTED_SUM else ZONES:
        for query in queries(tz):
            assert answer(stores.usage.query(meter, query)) == reference(aggregation, query), (tz, query)


@functools.cache
def reference(aggregation: Aggregation, query: MeterQuery) -> Any:
    """The naive reference's answer over HISTORY: the same for every kind of store, so each is
    computed once per test process and compared with every kind's answer (the gauge's
    integration over every window took seconds per kind)."""
    if aggregation is Aggregation.TIME_WEIGHTED_SUM:
        return expected_gauge(HISTORY, query)
    return expected(aggregation, HISTORY, query)


def test_a_late_event_lands_in_its_true_window(stores: Stores) -> None:
    meter = stores.meters.create(NS, spec(Aggregation.SUM))
    on_time = HISTORY[10]
    send(stores, [on_time])
    drain(stores)
    late = Sent(2, "c1", on_time.time_us - 40 * 86_400_000_000, Decimal("0.000000000000000001"), "eu", "u")
    send(stores, [late])
    drain(stores)
    query = MeterQuery(end=END, window_size=WindowSize.DAY, tz=ZoneInfo("Asia/Kathmandu"), group_by=("subject",))
    rows = stores.usage.query(meter, query)
    assert answer(rows) == expected(Aggregation.SUM, [on_time, late], query)
    assert rows[0].value == late.value and rows[0].window_start <= late.time_us // 1_000_000 < rows[0].window_end


def test_every_adapter_answers_alike_to_the_digit(tmp_path: Path, scale_stack: Stack) -> None:
    answers: dict[str, list[list[tuple[Any, ...]]]] = {}
    for kind in kinds({"usage", "ledger", "meters"}):
        opened = open_stores(kind, tmp_path / kind, scale_stack)
        stores = next(opened)
        try:
            meters = [stores.meters.create(NS, spec(a)) for a in aggregations("clickhouse")]
            send(stores, HISTORY)
            drain(stores)
            answers[kind] = [
                [(r.window_start, r.window_end, r.subject, r.group_by, str(r.value)) for r in stores.usage.query(m, q)]
                for m in meters
                for q in queries("Asia/Kathmandu")
            ]
        finally:
            opened.close()
    for kind in answers:
        assert answers[kind] == answers["memory"], kind


def batch_of(stores: Stores, upto: int | None = None) -> Batch:
    """What the aggregator would apply next, computed from a snapshot taken now."""
    snap = stores.usage.snapshot()
    compiled = [CompiledMeter(m) for m in snap.meters]
    entries = stores.ledger.read(snap.offset, (upto or stores.ledger.position()) - snap.offset)
    replay = Replay(CAP, snap.group_values, snap.subjects, keep=True)
    replay.apply(compiled, entries)
    return Batch(snap.offset, entries[-1].seq, frozenset(m.meter.key for m in compiled), replay, entries=entries)


def test_a_batch_moves_the_offset_with_its_rollups(stores: Stores) -> None:
    stores.meters.create(NS, spec(Aggregation.SUM))
    send(stores, HISTORY[:5])
    batch = batch_of(stores, upto=3)
    assert stores.usage.apply(batch) is True
    snap = stores.usage.snapshot()
    assert snap.offset == 3
    assert total(stores, "sum") == sum((e.value for e in HISTORY[:3]), Decimal(0))
    key = snap.meters[0].key
    assert snap.subjects[key] == {e.subject for e in HISTORY[:3]}
    assert snap.group_values.get((key, "region"), set()) >= {e.region for e in HISTORY[:3] if e.region}


def test_a_batch_from_a_stale_offset_is_refused_and_writes_nothing(stores: Stores) -> None:
    stores.meters.create(NS, spec(Aggregation.SUM))
    send(stores, HISTORY[:6])
    stale = batch_of(stores, upto=6)
    assert stores.usage.apply(batch_of(stores, upto=2)) is True
    before = stores.usage.snapshot()
    assert stores.usage.apply(stale) is False
    after = stores.usage.snapshot()
    assert (after.offset, after.subjects, after.group_values) == (2, before.subjects, before.group_values)
    assert total(stores, "sum") == sum((e.value for e in HISTORY[:2]), Decimal(0))
    drain(stores)
    assert total(stores, "sum") == sum((e.value for e in HISTORY[:6]), Decimal(0))


def test_a_batch_for_another_set_of_meters_is_refused_and_writes_nothing(stores: Stores) -> None:
    stores.meters.create(NS, spec(Aggregation.SUM))
    send(stores, HISTORY[:4])
    computed = batch_of(stores)
    stores.meters.create(NS, spec(Aggregation.COUNT))
    assert stores.usage.apply(computed) is False
    assert stores.usage.snapshot().offset == 0
    assert total(stores, "sum") == 0
    again = batch_of(stores)
    stores.meters.delete(NS, "count")
    assert stores.usage.apply(again) is False
    assert total(stores, "sum") == 0
    drain(stores)
    assert total(stores, "sum") == sum((e.value for e in HISTORY[:4]), Decimal(0))


def test_a_meter_created_later_covers_the_events_before_it(stores: Stores) -> None:
    stores.meters.create(NS, spec(Aggregation.SUM))
    send(stores, HISTORY[:30])
    drain(stores)
    stores.meters.create(NS, spec(Aggregation.MAX))
    send(stores, HISTORY[30:40])
    drain(stores)
    assert stores.usage.snapshot().backfills == []
    assert total(stores, "sum") == sum((e.value for e in HISTORY[:40]), Decimal(0))
    rows = stores.usage.query(stores.meters.get(NS, "max"), MeterQuery(start=0, end=END))
    assert [r.value for r in rows] == [max(e.value for e in HISTORY[:40])]


def test_a_deleted_meter_loses_its_usage(stores: Stores) -> None:
    meter = stores.meters.create(NS, spec(Aggregation.COUNT))
    send(stores, HISTORY[:5])
    drain(stores)
    assert total(stores, "count") == 5
    stores.meters.delete(NS, "count")
    again = stores.meters.create(NS, spec(Aggregation.COUNT))
    assert again.key != meter.key
    assert stores.usage.query(meter, MeterQuery(start=0, end=END)) == []
    drain(stores)
    assert total(stores, "count") == 5  # the new meter replays the ledger once
    assert stores.usage.snapshot().subjects.get(meter.key) is None


def test_an_empty_meter_answers_no_rows(stores: Stores) -> None:
    meter = stores.meters.create(NS, MeterSpec(slug="none", event_type="other", aggregation=Aggregation.COUNT))
    send(stores, HISTORY[:3])
    drain(stores)
    assert stores.usage.query(meter, MeterQuery(end=END)) == []
    assert stores.usage.query(meter, MeterQuery(start=0, end=END)) == []


def _partial_ranges() -> list[tuple[int, int]]:
    """Ranges with partial minutes, cut at events: after one, before one, inside one minute,
    and both ends inside minutes hours apart."""
    times = sorted(e.time_us for e in HISTORY)
    mid, late = times[len(times) // 2], times[-3]
    ranges = [
        (mid + 1, END * 1_000_000),
        (mid // 60_000_000 * 60_000_000, mid),
        (mid, mid + 1),
        (times[3] + 1, late + 1),
    ]
    assert all(a % 60_000_000 or b % 60_000_000 for a, b in ranges)
    return ranges


def gauge_by_subject(a_us: int, b_us: int) -> dict[str, Decimal]:
    """TIME_WEIGHTED_SUM over ``[a_us, b_us)`` per subject, from the readings alone."""
    out: dict[str, Decimal] = {}
    for (subject, _), readings in gauge_series(HISTORY).items():
        area = integral(readings, a_us, b_us)
        if area is not None:
            out[subject] = add(out.get(subject, Decimal(0)), area)
    return out


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_a_partial_minute_is_answered_exactly(stores: Stores, aggregation: Aggregation) -> None:
    """Any ``from``/``to``: whole minutes from the rollups, the partial first and last minute
    from the events themselves; never a whole minute's usage for part of it, never refused."""
    if aggregation not in aggregations(stores.kind):
        pytest.skip(f"the {stores.kind} usage store keeps no {aggregation.value} (its mode refuses such meters)")
    meter = stores.meters.create(NS, spec(aggregation))
    send(stores, HISTORY)
    drain(stores)
    gauge = aggregation is Aggregation.TIME_WEIGHTED_SUM
    for a, b in _partial_ranges():
        query = MeterQuery(
            start=a // 60_000_000 * 60, end=-(-b // 60_000_000) * 60, group_by=("subject",),
            start_us=a if a % 60_000_000 else None, end_us=b if b % 60_000_000 else None,
        )  # fmt: skip
        by_subject: dict[str, list[Sent]] = {}
        for e in HISTORY:
            if a <= e.time_us < b:
                by_subject.setdefault(e.subject, []).append(e)
        rows = stores.usage.query(meter, query)
        want = gauge_by_subject(a, b) if gauge else {s: value_of(aggregation, es) for s, es in by_subject.items()}
        assert {r.subject: r.value for r in rows} == want
        assert all((r.window_start_us, r.window_end_us) == (a, b) for r in rows)
        if aggregation in (Aggregation.SUM, Aggregation.COUNT) or gauge:  # windows in a :45 zone add up
            hourly = dataclasses.replace(query, window_size=WindowSize.HOUR, tz=ZoneInfo("Asia/Kathmandu"))
            windows = stores.usage.query(meter, hourly)
            got = reduce(add, (r.value for r in windows), Decimal(0))
            assert got == reduce(add, want.values(), Decimal(0))
            assert all(a <= r.window_start_us < r.window_end_us <= b for r in windows)


def test_the_built_in_meter_sums_every_events_size_exactly(stores: Stores) -> None:
    """``ingested_bytes`` (docs/meters.md) in every usage store: every type's events, each its
    canonical size, in every zone, window, subject grouping and partial minute."""
    meter = stores.meters.create(NS, ingested_bytes_spec())

    def body(e: Sent) -> bytes:  # a third of the events are of another type: every type counts
        return e.body().replace(b'"type":"t"', b'"type":"other"') if e.seq % 3 == 0 else e.body()

    raw = b"[" + b",".join(body(e) for e in HISTORY) + b"]"
    found = decode_events(split_body(raw, "batch", 10_000), NS, T0_US, LIMITS)
    assert [o.status for o in stores.ledger.append(NS, found).result(10)] == [Status.ACCEPTED] * len(HISTORY)
    drain(stores)
    sized = [dataclasses.replace(e, value=Decimal(event_size(body(e), e.time_us))) for e in HISTORY]
    for tz in ZONES:
        for query in queries(tz):
            if "region" in query.group_by or query.filters:
                continue  # no groupBy: it has no region
            assert answer(stores.usage.query(meter, query)) == expected(Aggregation.SUM, sized, query), (tz, query)
    for a, b in _partial_ranges():
        query = MeterQuery(
            start=a // 60_000_000 * 60, end=-(-b // 60_000_000) * 60, group_by=("subject",),
            start_us=a if a % 60_000_000 else None, end_us=b if b % 60_000_000 else None,
        )  # fmt: skip
        want: dict[str, Decimal] = {}
        for e in sized:
            if a <= e.time_us < b:
                want[e.subject] = want.get(e.subject, Decimal(0)) + e.value
        assert {r.subject: r.value for r in stores.usage.query(meter, query)} == want
