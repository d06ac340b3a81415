"""Per-subject month summaries on real SQLite files: per-subject queries over months (what
top customers and feature adoption read) equal what the ledger's events give, in UTC and in
zones with DST and a +05:45 offset, with late events and after voids and amends; ``rebuild``
reproduces the month rows and ``--check`` finds an edited one; a store from before them gains
them on opening."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from test_summaries import AGGREGATIONS, LIMITS, _final, rebuild_report, spec

from meterline.adapters.sqlite import meters as sqlite_meters
from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.adapters.sqlite.schema import connect
from meterline.adapters.sqlite.summaries import MONTH, MONTHS_KEY, month_of, next_month, plan, with_months
from meterline.domain.clock import FixedClock
from meterline.domain.events.decode import decode_events, split_body
from meterline.domain.meters.model import Aggregation, Meter
from meterline.domain.meters.query import SUBJECT, MeterQuery
from meterline.domain.meters.windows import WindowSize, grid
from meterline.services.aggregation import Aggregator
from meterline.services.corrections import CorrectionService

# 2025-12-20 .. 2026-04-10 UTC: January to March are whole UTC months; New York moves to
# daylight time on 2026-03-08, inside them
FIRST = int(datetime(2025, 12, 20, tzinfo=UTC).timestamp())
LAST = int(datetime(2026, 4, 10, tzinfo=UTC).timestamp())
NOW_US = LAST * 1_000_000 + 86_400_000_000
ZONES = ("UTC", "America/New_York", "Asia/Kathmandu")


def events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = rng.randrange(FIRST * 1_000_000, LAST * 1_000_000)
        value = Decimal(rng.randrange(-500, 5000)) / (1 if i % 3 else 4)
        out.append(
            {
                "specversion": "1.0",
                "id": f"m{seed}-{i}",
                "source": "s",
                "type": rng.choice(("t", "t", "t", "other")),
                "subject": f"c{rng.randrange(5)}",
                "time": datetime.fromtimestamp(t / 1e6, UTC).isoformat().replace("+00:00", "Z"),
                "data": {"v": value, "g": rng.choice(("x", "y"))},
            }
        )
    return out


def counting(b: EmbeddedBackend) -> list[tuple[int, str, str, int, dict[str, Any]]]:
    """(seq, type, subject, time_us, data) of the ledger entries that count: an original not
    corrected, or the last amend of its chain (a chain ending in a void counts nothing)."""
    rows = b.db.reader().execute(
        "SELECT e.seq, e.type, e.subject, e.time_us, e.raw, c.original, c.action FROM events e"
        " LEFT JOIN corrections c ON c.seq = e.seq ORDER BY e.seq"
    )
    last: dict[int, tuple[Any, ...]] = {}
    for seq, type_, subject, time_us, raw, original, action in rows:
        last[original or seq] = (seq, type_, subject, time_us, raw, action)
    return [
        (seq, t, s, us, msgspec.json.decode(raw)["data"])
        for seq, t, s, us, raw, action in last.values()
        if action != "void"
    ]


def expected(
    entries: list[Any], meter: Meter, bounds: tuple[int, ...], by_subject: bool, subjects: tuple[str, ...] = ()
) -> dict[Any, Decimal]:
    picked: dict[tuple[int, str | None], list[tuple[int, int, Decimal]]] = {}
    for seq, type_, subject, time_us, data in entries:
        t = time_us // 1_000_000
        if type_ != "t" or not bounds[0] <= t < bounds[-1] or (subjects and subject not in subjects):
            continue
        w = max(i for i, b in enumerate(bounds[:-1]) if b <= t)
        key = (bounds[w], subject if by_subject else None)
        picked.setdefault(key, []).append((time_us, seq, Decimal(str(data["v"]))))
    return {key: _final(meter.spec.aggregation, values) for key, values in picked.items()}


def ranges(zone: str) -> list[tuple[int, int]]:
    tz = ZoneInfo(zone)
    return [
        (  # ragged: mid-day edges in late December and early April
            int(datetime(2025, 12, 25, 12, 30, tzinfo=tz).timestamp()),
            int(datetime(2026, 4, 5, 18, 45, tzinfo=tz).timestamp()),
        ),
        (  # whole local months: not whole UTC months outside UTC
            int(datetime(2026, 1, 1, tzinfo=tz).timestamp()),
            int(datetime(2026, 4, 1, tzinfo=tz).timestamp()),
        ),
    ]


def check_queries(b: EmbeddedBackend, meters: list[Meter], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every meter's answers per subject (and meter-wide) equal the counting ledger entries'."""
    levels: list[int] = []
    original, folded = sqlite_meters.subject_states, sqlite_meters.fold_subjects

    def noted(*args: Any) -> Any:
        levels.append(args[3])
        return original(*args)

    def noted_parts(*args: Any) -> Any:  # the row sets folded in one statement
        levels.extend(level for _, level, *_ in args[3])
        return folded(*args)

    monkeypatch.setattr(sqlite_meters, "subject_states", noted)
    monkeypatch.setattr(sqlite_meters, "fold_subjects", noted_parts)
    entries = counting(b)
    for zone in ZONES:
        tz = ZoneInfo(zone)
        for start, end in ranges(zone):
            for size in (None, WindowSize.MONTH, WindowSize.DAY):
                bounds = grid(start, end, size, tz)
                for meter in meters:
                    for by_subject in (True, False):
                        group_by = (SUBJECT,) if by_subject else ()
                        query = MeterQuery(start=start, end=end, window_size=size, tz=tz, group_by=group_by)
                        got = {(r.window_start, r.subject): r.value for r in b.meters.query(meter, query)}
                        want = expected(entries, meter, bounds, by_subject)
                        assert got == want, (meter.slug, zone, start, size, by_subject)
                        picked = ("c1", "c3")  # a customer's subjects, apart or combined (its page)
                        query = MeterQuery(start=start, end=end, window_size=size, tz=tz, subjects=picked,
                                           combine_subjects=not by_subject)  # fmt: skip
                        got = {(r.window_start, r.subject): r.value for r in b.meters.query(meter, query)}
                        want = expected(entries, meter, bounds, by_subject, picked)
                        assert got == want, (meter.slug, zone, start, size, by_subject, picked)
    assert MONTH in levels  # the month rows answered, not only the day rows


def opened(path: Path) -> EmbeddedBackend:
    return EmbeddedBackend(path, IngestSettings(None, 100), FixedClock(NOW_US), fsync="normal")


def send(b: EmbeddedBackend, batch: list[dict[str, Any]]) -> None:
    found = decode_events(split_body(msgspec.json.encode(batch), "batch", 10_000), "default", NOW_US, LIMITS)
    assert all(o.status.value == "accepted" for o in b.ledger.append("default", found).result(30))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[EmbeddedBackend, list[Meter]]]:
    """Every aggregation's meter; events in three batches, the later ones reaching back in
    time (late events), aggregated in small chunks."""
    b = opened(tmp_path)
    meters = [b.meters.create("default", spec(a)) for a in AGGREGATIONS]
    first = sorted(events(900, 1), key=lambda e: str(e["time"]))
    send(b, first[:500])
    send(b, events(300, 2))
    send(b, first[500:])
    Aggregator(b.ledger, b.usage, cap=100, chunk=250).drain()
    yield b, meters
    b.close()


def test_with_months_reads_whole_utc_months_and_days_around_them() -> None:
    jan = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    mar = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())
    start = int(datetime(2025, 12, 30, 18, 15, tzinfo=UTC).timestamp())
    end = int(datetime(2026, 3, 3, 6, tzinfo=UTC).timestamp())
    segments = plan((start, end))
    assert segments is not None
    got = with_months(segments)
    assert (MONTH, jan, mar) in got
    assert (86400, jan - 86400, jan) in got and (86400, mar, mar + 2 * 86400) in got
    assert sum(b - a for _, a, b in got) == end - start  # covered once, nothing left out
    assert month_of(mar + 12345) == mar and next_month(jan) == int(datetime(2026, 2, 1, tzinfo=UTC).timestamp())


def test_per_subject_answers_over_months_equal_the_ledger_in_any_zone(
    store: tuple[EmbeddedBackend, list[Meter]], monkeypatch: pytest.MonkeyPatch
) -> None:
    b, meters = store
    assert b.db.reader().execute("SELECT count(*) FROM summaries WHERE level = ?", (MONTH,)).fetchone()[0] > 0
    check_queries(b, meters, monkeypatch)


def test_voids_and_amends_refresh_the_month_rows(
    store: tuple[EmbeddedBackend, list[Meter]], monkeypatch: pytest.MonkeyPatch
) -> None:
    b, meters = store
    service = CorrectionService(b.corrections, FixedClock(NOW_US), future_skew_us=300_000_000)
    rows = b.db.reader().execute("SELECT source, id, subject, raw FROM events WHERE type = 't' ORDER BY seq").fetchall()
    for source, id_, _, _ in rows[10:40:3]:
        service.void("default", source, id_, reason="test traffic", actor="test")
    for i, (source, id_, subject, raw) in enumerate(rows[50:70:2]):
        data = msgspec.json.decode(raw)["data"]
        moved = {  # to another month (and, every other one, another subject), another value
            "type": "t",
            "subject": subject if i % 2 else "c9",
            "time": f"2026-0{1 + i % 3}-1{i % 9}T0{i % 7}:30:00Z",
            "data": {"v": str(Decimal(str(data["v"])) + 7), "g": data["g"]},
        }
        service.amend("default", source, id_, msgspec.json.encode(moved), reason="fix", actor="test")
    Aggregator(b.ledger, b.usage, cap=100, chunk=250).drain()
    check_queries(b, meters, monkeypatch)
    assert not any(rebuild_report(Path(b.db.path).parent, replace=False).values())


def test_rebuild_checks_the_month_rows_and_an_older_store_gains_them(
    store: tuple[EmbeddedBackend, list[Meter]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, meters = store
    path = Path(store[0].db.path).parent
    conn = connect(path / "meterline.db")
    conn.execute("UPDATE summaries SET cnt = cnt + 1 WHERE level = ? AND subject = 'c1'", (MONTH,))
    conn.close()
    assert rebuild_report(path, replace=False)["summaries"] > 0
    rebuild_report(path, replace=True)
    assert not any(rebuild_report(path, replace=False).values())
    conn = connect(path / "meterline.db")  # as a store written before the month rows existed
    conn.execute("DELETE FROM summaries WHERE level = ?", (MONTH,))
    conn.execute("DELETE FROM meta WHERE key = ?", (MONTHS_KEY,))
    conn.close()
    b = opened(path)
    try:
        assert b.db.reader().execute("SELECT count(*) FROM summaries WHERE level = ?", (MONTH,)).fetchone()[0] > 0
        check_queries(b, meters, monkeypatch)
    finally:
        b.close()
    assert not any(rebuild_report(path, replace=False).values())


def test_an_older_store_with_a_gauge_meter_gains_its_month_rows(tmp_path: Path) -> None:
    """A TIME_WEIGHTED_SUM meter's summaries are counts of readings: the month rows an older
    store gains on opening are folded as counts too (they were refused as a gauge's before)."""
    b = opened(tmp_path)
    for aggregation in (Aggregation.TIME_WEIGHTED_SUM, Aggregation.SUM):
        b.meters.create("default", spec(aggregation))
    send(b, sorted(events(400, 3), key=lambda e: str(e["time"])))
    Aggregator(b.ledger, b.usage, cap=100, chunk=250).drain()
    months = "SELECT meter, subject, bucket, cnt, total FROM summaries WHERE level = ? ORDER BY 1, 2, 3"
    written = b.db.reader().execute(months, (MONTH,)).fetchall()
    b.close()
    assert len({row[0] for row in written}) == 2  # both meters have month rows
    conn = connect(tmp_path / "meterline.db")  # as a store written before the month rows existed
    conn.execute("DELETE FROM summaries WHERE level = ?", (MONTH,))
    conn.execute("DELETE FROM meta WHERE key = ?", (MONTHS_KEY,))
    conn.close()
    b = opened(tmp_path)
    try:
        assert b.db.reader().execute(months, (MONTH,)).fetchall() == written
    finally:
        b.close()
    assert not any(rebuild_report(tmp_path, replace=False).values())
