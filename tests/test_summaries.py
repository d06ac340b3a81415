"""Summaries and ledger counts on real SQLite files: meter queries answered from the meter-wide
and per-subject-day summaries equal what the ledger's events give, in zones with DST and with
+05:30 / +05:45 offsets, with late events; ``rebuild`` reproduces and checks them; a store from
before them gains them on opening; an hour whose rollups were recomputed refreshes them;
reconciliation's accepted counts equal the ledger's."""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from meterline.adapters.sqlite import meters as sqlite_meters
from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.adapters.sqlite.rebuild import rebuild
from meterline.adapters.sqlite.reconciliation import SqliteReconciliationCounts
from meterline.adapters.sqlite.replay import LedgerEntry, Replay, write_replay
from meterline.adapters.sqlite.schema import connect
from meterline.adapters.sqlite.summaries import refresh
from meterline.domain.clock import FixedClock
from meterline.domain.decimals import average
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.model import Aggregation, Meter, MeterSpec
from meterline.domain.meters.query import SUBJECT, MeterQuery
from meterline.domain.meters.windows import WindowSize, grid
from meterline.services.aggregation import Aggregator

LIMITS = Limits(10_000, 300_000_000, None)
AGGREGATIONS = (
    Aggregation.SUM,
    Aggregation.COUNT,
    Aggregation.AVG,
    Aggregation.MIN,
    Aggregation.MAX,
    Aggregation.LATEST,
)
ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu")
# 2026-03-05 .. 2026-03-12 UTC: New York moves to daylight time on 2026-03-08
START = int(datetime(2026, 3, 5, tzinfo=UTC).timestamp())
END = int(datetime(2026, 3, 12, tzinfo=UTC).timestamp())
NOW_US = (END + 86400) * 1_000_000


def spec(aggregation: Aggregation) -> MeterSpec:
    value = None if aggregation is Aggregation.COUNT else "$.v"
    slug = aggregation.value.lower()
    return MeterSpec(slug=slug, event_type="t", aggregation=aggregation, value_property=value, group_by={"g": "$.g"})


def open_backend(path: Path) -> EmbeddedBackend:
    return EmbeddedBackend(path, IngestSettings(None, 100), FixedClock(NOW_US), fsync="normal")


def make_events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = rng.randrange(START * 1_000_000, END * 1_000_000)
        value = Decimal(rng.randrange(-500, 5000)) / (1 if i % 3 else 4)  # some quarters: exact decimals
        data = {"v": value, "g": rng.choice(("x", "y"))}
        out.append(
            {
                "specversion": "1.0",
                "id": f"e{seed}-{i}",
                "source": "s",
                "type": rng.choice(("t", "t", "t", "other")),
                "subject": f"c{rng.randrange(6)}",
                "time": datetime.fromtimestamp(t / 1e6, UTC).isoformat().replace("+00:00", "Z"),
                "data": data,
            }
        )
    return out


def send(b: EmbeddedBackend, events: list[dict[str, Any]]) -> None:
    body = msgspec.json.encode(events)
    found = decode_events(split_body(body, "batch", 10_000), "default", NOW_US, LIMITS)
    outcomes = b.ledger.append("default", found).result(30)
    assert all(o.status.value == "accepted" for o in outcomes)


def ledger(b: EmbeddedBackend) -> list[tuple[int, str, str, int, dict[str, Any]]]:
    """(seq, type, subject, time_us, data) of every ledger entry."""
    rows = b.db.reader().execute("SELECT seq, type, subject, time_us, raw FROM events ORDER BY seq")
    return [(seq, t, s, us, msgspec.json.decode(raw)["data"]) for seq, t, s, us, raw in rows]


def expected(
    entries: list[tuple[int, str, str, int, dict[str, Any]]],
    aggregation: Aggregation,
    bounds: tuple[int, ...],
    by_subject: bool,
) -> dict[tuple[int, str | None], Decimal]:
    """The answer computed from the ledger's events themselves."""
    picked: dict[tuple[int, str | None], list[tuple[int, int, Decimal]]] = {}
    for seq, type_, subject, time_us, data in entries:
        t = time_us // 1_000_000
        if type_ != "t" or not bounds[0] <= t < bounds[-1]:
            continue
        w = max(i for i, b in enumerate(bounds[:-1]) if b <= t)
        value = Decimal(str(data["v"]))
        picked.setdefault((bounds[w], subject if by_subject else None), []).append((time_us, seq, value))
    return {key: _final(aggregation, values) for key, values in picked.items()}


def _final(aggregation: Aggregation, values: list[tuple[int, int, Decimal]]) -> Decimal:
    numbers = [v for _, _, v in values]
    if aggregation is Aggregation.SUM:
        return sum(numbers, Decimal(0))
    if aggregation is Aggregation.COUNT:
        return Decimal(len(numbers))
    if aggregation is Aggregation.AVG:
        return average(sum(numbers, Decimal(0)), len(numbers))
    if aggregation is Aggregation.MIN:
        return min(numbers)
    if aggregation is Aggregation.MAX:
        return max(numbers)
    return max(values)[2]  # LATEST: greatest (event time, ledger position)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedBackend, list[Meter]]]:
    """Events in three batches, the later ones reaching back in time (late events), every
    aggregation's meter created before them, aggregated in small chunks."""
    b = open_backend(tmp_path_factory.mktemp("summaries"))
    meters = [b.meters.create("default", spec(a)) for a in AGGREGATIONS]
    events = make_events(1500, 1)
    events.sort(key=lambda e: e["time"])  # in time order, then late ones
    send(b, events[:700])
    send(b, make_events(400, 2))  # anywhere in the range: many land before what came first
    send(b, events[700:])
    Aggregator(b.ledger, b.usage, cap=100, chunk=250).drain()
    yield b, meters
    b.close()


@pytest.mark.parametrize("zone", ZONES)
def test_queries_from_the_summaries_equal_the_ledger_in_any_zone(
    store: tuple[EmbeddedBackend, list[Meter]], zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    b, meters = store
    entries = ledger(b)
    used = {"wide": 0, "days": 0, "folded": 0}
    for name, key in (("wide_states", "wide"), ("subject_states", "days"), ("fold_subjects", "days")):
        original = getattr(sqlite_meters, name)

        def counted(*args: Any, _original: Any = original, _key: str = key) -> Any:
            used[_key] += 1
            return _original(*args)

        monkeypatch.setattr(sqlite_meters, name, counted)
    fold_wide = sqlite_meters.fold_wide

    def folded(*args: Any) -> Any:
        states = fold_wide(*args)
        used["folded"] += states is not None
        return states

    monkeypatch.setattr(sqlite_meters, "fold_wide", folded)
    tz = ZoneInfo(zone)
    start = int(datetime(2026, 3, 5, 12, tzinfo=tz).timestamp())  # not on a UTC day: ragged edges
    end = int(datetime(2026, 3, 11, 18, tzinfo=tz).timestamp())
    for meter in meters:
        for size in (None, WindowSize.HOUR, WindowSize.DAY, WindowSize.MONTH):
            for by_subject in (False, True):
                query = MeterQuery(
                    start=start, end=end, window_size=size, tz=tz, group_by=(SUBJECT,) if by_subject else ()
                )
                bounds = grid(start, end, size, tz)
                got = {(r.window_start, r.subject): r.value for r in b.meters.query(meter, query)}
                want = expected(entries, meter.spec.aggregation, bounds, by_subject)
                assert got == want, (meter.slug, zone, size, by_subject)
    assert used["wide"] and used["days"]  # the summaries answered, not only the rollups
    assert used["folded"]  # meter-wide windows folded by SQLite (LATEST: rows merged in Python)


def _per_period(counts: dict[Any, int], periods: list[int]) -> dict[Any, int]:
    """Quarter-hour counts (keyed by bucket, or by (type, bucket)) added up per period start."""
    out: dict[Any, int] = {}
    for key, n in counts.items():
        bucket = key[1] if isinstance(key, tuple) else key
        at = periods[bisect.bisect_right(periods, bucket) - 1]
        k = (key[0], at) if isinstance(key, tuple) else at
        out[k] = out.get(k, 0) + n
    return out


def rebuild_report(path: Path, *, replace: bool) -> dict[str, int]:
    conn = connect(path / "meterline.db")
    try:
        conn.execute("BEGIN IMMEDIATE")
        report = rebuild(conn, cap=100, replace=replace)
        conn.execute("COMMIT" if replace else "ROLLBACK")
    finally:
        conn.close()
    return report.differences


def test_rebuild_reproduces_and_checks_summaries_and_ledger_counts(tmp_path: Path) -> None:
    b = open_backend(tmp_path)
    try:
        b.meters.create("default", spec(Aggregation.SUM))
        send(b, make_events(300, 3))
        Aggregator(b.ledger, b.usage, cap=100, chunk=64).drain()
        b.meters.create("default", spec(Aggregation.MAX))  # backfilled: counted once, not again
        send(b, make_events(50, 4))
        Aggregator(b.ledger, b.usage, cap=100, chunk=64).drain()
    finally:
        b.close()
    assert not any(rebuild_report(tmp_path, replace=False).values())
    conn = connect(tmp_path / "meterline.db")
    conn.execute("UPDATE summaries SET cnt = cnt + 1 WHERE level = 86400 AND subject = 'c1'")
    conn.execute("DELETE FROM ledger_counts WHERE type = 'other'")
    conn.close()
    found = rebuild_report(tmp_path, replace=False)
    assert found["summaries"] > 0 and found["ledger_counts"] > 0
    rebuild_report(tmp_path, replace=True)
    assert not any(rebuild_report(tmp_path, replace=False).values())


def test_a_store_from_before_the_summaries_gains_them_exactly_on_opening(tmp_path: Path) -> None:
    b = open_backend(tmp_path)
    try:
        for a in AGGREGATIONS:
            b.meters.create("default", spec(a))
        send(b, make_events(400, 5))
        Aggregator(b.ledger, b.usage, cap=100, chunk=100).drain()
        before = _answers(b)
    finally:
        b.close()
    conn = connect(tmp_path / "meterline.db")  # as a store written before the summaries existed
    conn.execute("DELETE FROM summaries")
    conn.execute("DELETE FROM ledger_counts")
    conn.execute("DELETE FROM meta WHERE key = 'summaries_version'")
    conn.close()
    b = open_backend(tmp_path)
    try:
        assert b.db.reader().execute("SELECT count(*) FROM summaries").fetchone()[0] > 0
        assert _answers(b) == before
    finally:
        b.close()
    assert not any(rebuild_report(tmp_path, replace=False).values())


def _answers(b: EmbeddedBackend) -> list[Any]:
    out = []
    for meter in b.meters.list("default"):
        for group_by in ((), (SUBJECT,)):
            query = MeterQuery(start=START, end=END, window_size=WindowSize.DAY, group_by=group_by)
            out.append([(r.window_start, r.subject, r.value) for r in b.meters.query(meter, query)])
    return out


def test_counted_reads_accepted_and_metered_at_one_position(tmp_path: Path) -> None:
    """Reconciliation's counts come from one snapshot: after each aggregator step, accepted
    equals the ledger up to the position it names, and every meter's metered counts are what
    ``reconcile``'s ledger replay expects at that same position (distinct values for
    UNIQUE_COUNT)."""
    b = open_backend(tmp_path)
    try:
        unique = MeterSpec(slug="who", event_type="t", aggregation=Aggregation.UNIQUE_COUNT, value_property="$.g")
        meters = [b.meters.create("default", spec(Aggregation.SUM)), b.meters.create("default", unique)]
        send(b, make_events(500, 6))
        aggregator = Aggregator(b.ledger, b.usage, cap=100, chunk=200)
        counts = SqliteReconciliationCounts(b.db)
        tz = ZoneInfo("Asia/Kathmandu")
        start = int(datetime(2026, 3, 6, tzinfo=tz).timestamp())  # a +05:45 midnight
        end = int(datetime(2026, 3, 10, tzinfo=tz).timestamp())
        entries = ledger(b)
        received = dict(b.db.reader().execute("SELECT seq, received_us FROM events").fetchall())
        for position in (200, 400, 500):
            aggregator._step()
            got = counts.counted("default", meters, start, end)
            assert (got.position, got.position_us) == (position, received[position])
            want: dict[tuple[str, int], int] = {}
            for seq, type_, _, time_us, _ in entries:
                t = time_us // 1_000_000
                if seq <= position and start <= t < end:
                    key = (type_, t - t % 900)
                    want[key] = want.get(key, 0) + 1
            assert got.accepted == want, position
            days = [start + 86400 * i for i in range(5)]  # +05:45 days: added up per day by SQLite
            by_day = counts.counted("default", meters, start, end, days)
            assert by_day.accepted == _per_period(want, days), position
            for meter in meters:
                assert by_day.metered[meter.slug] == _per_period(got.metered[meter.slug], days), meter.slug
            check = counts.ledger_check("default", meters, start, end, got.position)
            for meter in meters:
                expected_counts = {bucket: n for (slug, bucket), n in check.expected.items() if slug == meter.slug}
                assert got.metered[meter.slug] == expected_counts, (meter.slug, position)
                assert sum(expected_counts.values()) > 0
        assert counts.counted("other", meters[:1], start, end).accepted == {}
    finally:
        b.close()


def test_a_replaced_hour_refreshes_its_summaries_exactly(tmp_path: Path) -> None:
    """A writer that recomputes an hour of one subject from the ledger (as a correction does)
    replaces its rollups and refreshes the summaries holding it: a rebuild then agrees."""
    b = open_backend(tmp_path)
    try:
        meters = [b.meters.create("default", spec(a)) for a in AGGREGATIONS]
        send(b, make_events(400, 7))
        Aggregator(b.ledger, b.usage, cap=100, chunk=100).drain()
        seq, subject, time_us = (
            b.db.reader()
            .execute("SELECT seq, subject, time_us FROM events WHERE type = 't' ORDER BY seq LIMIT 1 OFFSET 17")
            .fetchone()
        )
    finally:
        b.close()
    hour = time_us // 1_000_000 - time_us // 1_000_000 % 3600
    conn = connect(tmp_path / "meterline.db")
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM events WHERE seq = ?", (seq,))  # the ledger as if it never held it
        quarter = time_us // 1_000_000 - time_us // 1_000_000 % 900
        conn.execute("UPDATE ledger_counts SET cnt = cnt - 1 WHERE type = 't' AND bucket = ?", (quarter,))
        conn.execute("DELETE FROM ledger_counts WHERE cnt = 0")
        entries = [
            LedgerEntry(*row)
            for row in conn.execute(
                "SELECT seq, namespace, source, type, subject, time_us, raw, received_us FROM events"
                " WHERE type = 't' AND subject = ? AND time_us >= ? AND time_us < ? ORDER BY seq",
                (subject, hour * 1_000_000, (hour + 3600) * 1_000_000),
            )
        ]
        for meter in meters:
            conn.execute(
                "DELETE FROM rollups WHERE meter = ? AND subject = ? AND bucket >= ? AND bucket < ?",
                (meter.key, subject, hour, hour + 3600),
            )
            again = Replay(100)
            again.apply([CompiledMeter(meter)], entries)
            write_replay(conn, again, "", summaries=False)
            refresh(conn, "", meter.key, meter.spec.aggregation, subject, hour)
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert not any(rebuild_report(tmp_path, replace=False).values())
