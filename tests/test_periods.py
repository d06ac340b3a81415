"""Recurring periods cut in a customer's time zone: golden cases plus properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.domain.clock import from_us, to_us
from meterline.domain.errors import InvalidInput
from meterline.domain.periods import Period, Recurrence, parse_interval, recurrence


def local(zone: str, *parts: int) -> datetime:
    year, month, day, hour, minute = (*parts, 0, 0)[:5]
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone))


NY, LON, KTM, KOL, LHI = "America/New_York", "Europe/London", "Asia/Kathmandu", "Asia/Kolkata", "Australia/Lord_Howe"

# (interval, zone, anchor as local wall time, k, boundary(k) in ISO-8601 with the zone's offset)
GOLDEN = [
    # America/New_York: DAY steps keep midnight across DST; the gap moves forward, fall-back takes fold=0.
    ("DAY", NY, (2024, 3, 9), 1, "2024-03-10T00:00:00-05:00"),
    ("DAY", NY, (2024, 3, 9), 2, "2024-03-11T00:00:00-04:00"),
    ("DAY", NY, (2024, 3, 9, 2, 30), 1, "2024-03-10T03:30:00-04:00"),
    ("DAY", NY, (2024, 3, 9, 2, 30), 2, "2024-03-11T02:30:00-04:00"),
    ("DAY", NY, (2024, 11, 2, 1, 30), 1, "2024-11-03T01:30:00-04:00"),
    ("DAY", NY, (2024, 11, 2, 1, 30), 2, "2024-11-04T01:30:00-05:00"),
    ("PT6H", NY, (2024, 3, 10), 1, "2024-03-10T07:00:00-04:00"),
    ("PT6H", NY, (2024, 11, 3), 1, "2024-11-03T05:00:00-05:00"),
    ("P2W", NY, (2024, 3, 4), 1, "2024-03-18T00:00:00-04:00"),
    ("P2W", NY, (2024, 3, 4), -1, "2024-02-19T00:00:00-05:00"),
    # Europe/London: gap 01:00 -> 02:00 on 2024-03-31.
    ("MONTH", LON, (2024, 3, 1), 1, "2024-04-01T00:00:00+01:00"),
    ("DAY", LON, (2024, 3, 30, 1, 30), 1, "2024-03-31T02:30:00+01:00"),
    ("WEEK", LON, (2024, 10, 21), 1, "2024-10-28T00:00:00+00:00"),
    # Asia/Kathmandu +05:45 and Asia/Kolkata +05:30.
    ("MONTH", KTM, (2024, 1, 31), 1, "2024-02-29T00:00:00+05:45"),
    ("DAY", KTM, (2024, 1, 31), 400, "2025-03-06T00:00:00+05:45"),
    ("WEEK", KOL, (2024, 1, 1), 1, "2024-01-08T00:00:00+05:30"),
    ("YEAR", KOL, (2024, 4, 1), 1, "2025-04-01T00:00:00+05:30"),
    # Australia/Lord_Howe: 30-minute DST (+10:30 / +11:00).
    ("DAY", LHI, (2024, 10, 5, 2, 15), 1, "2024-10-06T02:45:00+11:00"),
    ("DAY", LHI, (2024, 4, 6), 2, "2024-04-08T00:00:00+10:30"),
    # Month ends: always from the anchor, clipped to the month's last day.
    ("MONTH", NY, (2023, 1, 31), 1, "2023-02-28T00:00:00-05:00"),
    ("MONTH", NY, (2023, 1, 31), 2, "2023-03-31T00:00:00-04:00"),
    ("MONTH", NY, (2023, 1, 31), 3, "2023-04-30T00:00:00-04:00"),
    ("MONTH", NY, (2024, 1, 31), 1, "2024-02-29T00:00:00-05:00"),
    ("MONTH", NY, (2024, 1, 30), 1, "2024-02-29T00:00:00-05:00"),
    ("MONTH", NY, (2024, 1, 30), 2, "2024-03-30T00:00:00-04:00"),
    ("MONTH", NY, (2023, 1, 29), 1, "2023-02-28T00:00:00-05:00"),
    ("MONTH", NY, (2023, 1, 29), 2, "2023-03-29T00:00:00-04:00"),
    ("MONTH", NY, (2024, 3, 31), -1, "2024-02-29T00:00:00-05:00"),
    ("MONTH", NY, (2024, 3, 31), -13, "2023-02-28T00:00:00-05:00"),
    ("YEAR", NY, (2024, 2, 29), 1, "2025-02-28T00:00:00-05:00"),
    ("YEAR", NY, (2024, 2, 29), 4, "2028-02-29T00:00:00-05:00"),
    ("YEAR", NY, (2024, 2, 29), -1, "2023-02-28T00:00:00-05:00"),
    ("P1M15D", "UTC", (2024, 1, 31), 1, "2024-03-15T00:00:00+00:00"),
    ("P1M15D", "UTC", (2024, 1, 31), 2, "2024-04-30T00:00:00+00:00"),
]


@pytest.mark.parametrize(("interval", "zone", "anchor", "k", "expected"), GOLDEN)
def test_golden_boundaries(interval: str, zone: str, anchor: tuple[int, ...], k: int, expected: str) -> None:
    r = recurrence(interval, local(zone, *anchor), zone)
    b = r.boundary(k)
    assert b.isoformat() == expected
    assert b.tzinfo == ZoneInfo(zone)
    assert r.period_at(b).start_us == to_us(b)  # a boundary starts its own period


@pytest.mark.parametrize(
    ("anchor", "day", "hours"),
    [((2024, 3, 9), (2024, 3, 10), 23), ((2024, 11, 2), (2024, 11, 3), 25), ((2024, 7, 1), (2024, 7, 2), 24)],
)
def test_day_length_follows_dst(anchor: tuple[int, ...], day: tuple[int, ...], hours: int) -> None:
    p = recurrence("DAY", local(NY, *anchor), NY).period_at(local(NY, *day, 12))
    assert p.start == local(NY, *day)
    assert p.end_us - p.start_us == hours * 3_600_000_000


def test_boundary_zero_is_the_anchor_even_at_second_occurrence() -> None:
    anchor = datetime(2024, 11, 3, 6, 30, tzinfo=UTC)  # 01:30 EST, the second 01:30 that night
    r = recurrence("DAY", anchor, NY)
    assert to_us(r.boundary(0)) == to_us(anchor) and r.boundary(0).fold == 1
    assert r.boundary(1).isoformat() == "2024-11-04T01:30:00-05:00"


def test_period_at_before_after_and_far() -> None:
    r = recurrence("MONTH", local(KTM, 2024, 1, 31), KTM)
    assert r.period_at(local(KTM, 2024, 3, 30, 23, 59)) == Period(local(KTM, 2024, 2, 29), local(KTM, 2024, 3, 31))
    assert r.period_at(local(KTM, 2023, 12, 31)) == Period(local(KTM, 2023, 12, 31), local(KTM, 2024, 1, 31))
    assert r.period_at(local(KTM, 2023, 12, 30, 23)).start == local(KTM, 2023, 11, 30)
    far = r.period_at(local(KTM, 2399, 2, 27, 12))
    assert (far.start, far.end) == (local(KTM, 2399, 1, 31), local(KTM, 2399, 2, 28))
    assert r.period_at(local(KTM, 1901, 6, 1)).start == local(KTM, 1901, 5, 31)


def test_exact_interval_is_o1_far_from_anchor() -> None:
    r = recurrence("PT1S", datetime(2024, 1, 1, tzinfo=UTC), KOL)
    p = r.period_at_us(to_us(datetime(2300, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)))
    assert p.start == datetime(2300, 1, 1, tzinfo=UTC) and p.end_us - p.start_us == 1_000_000
    assert p.start.tzinfo == ZoneInfo(KOL)


def test_period_equality_is_by_instant() -> None:
    a = Period(local(NY, 2024, 1, 1), local(NY, 2024, 1, 2))
    b = Period(datetime(2024, 1, 1, 5, tzinfo=UTC), datetime(2024, 1, 2, 5, tzinfo=UTC))
    assert a == b and hash(a) == hash(b)
    first = datetime(2024, 11, 3, 1, 30, tzinfo=ZoneInfo(NY))
    assert Period(first, first + timedelta(hours=1)) != Period(first.replace(fold=1), first + timedelta(hours=1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("day", "DAY"), ("Week", "WEEK"), ("P1D", "DAY"), ("P1W", "WEEK"), ("P7D", "WEEK"), ("P1M", "MONTH"),
        ("P1Y", "YEAR"), ("P12M", "YEAR"), ("P2W", "P2W"), ("P14D", "P2W"), ("P14M", "P1Y2M"), ("PT6H", "PT6H"),
        ("PT24H", "PT24H"), ("PT90M", "PT1H30M"), ("PT1.5S", "PT1.5S"), ("P1M15D", "P1M15D"), ("P1DT6H", "P1DT6H"),
        ("P1DT", "DAY"),
    ],
)  # fmt: skip
def test_parse_interval_normalises(value: str, expected: str) -> None:
    assert parse_interval(value) == expected
    assert parse_interval(expected) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "not an ISO-8601 duration"), ("HOUR", "not an ISO-8601 duration"), ("1D", "not an ISO-8601 duration"),
        ("-P1D", "negative"), ("P", "longer than zero"), ("PT", "longer than zero"), ("P0D", "longer than zero"),
        ("PT0S", "longer than zero"), ("P1.5M", "whole numbers"), ("P0.5D", "whole numbers"),
        ("PT1e9H", "not an ISO-8601 duration"), ("P1D2M", "not an ISO-8601 duration"),
        ("PT99999999999999999H", "too large"),
    ],
)  # fmt: skip
def test_parse_interval_rejects(value: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason) as exc:
        parse_interval(value)
    assert exc.value.code == "invalid_interval"


def test_recurrence_validates() -> None:
    anchor = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="not a known IANA time zone") as exc:
        recurrence("DAY", anchor, "Mars/Olympus_Mons")
    assert exc.value.code == "invalid_zone"
    for bad in ("", "../etc/passwd", "America"):
        with pytest.raises(InvalidInput):
            recurrence("DAY", anchor, bad)
    with pytest.raises(InvalidInput, match="time zone") as exc:
        recurrence("DAY", datetime(2024, 1, 1), "UTC")
    assert exc.value.code == "invalid_datetime"
    with pytest.raises(InvalidInput, match="normal form"):
        Recurrence("P7D", anchor, "UTC")
    with pytest.raises(InvalidInput, match="time zone"):
        recurrence("DAY", anchor, "UTC").period_at(datetime(2024, 1, 1))
    with pytest.raises(InvalidInput) as exc:
        recurrence("YEAR", anchor, "UTC").boundary(10_000)
    assert exc.value.code == "period_out_of_range"


# Hypothesis: zones with half-hour, 45-minute, 30-minute-DST, southern-hemisphere and negative offsets.
ZONES = [NY, LON, KTM, KOL, LHI, "UTC", "Europe/Dublin", "America/St_Johns", "Australia/Adelaide", "Pacific/Chatham"]
INTERVALS = ["DAY", "WEEK", "MONTH", "YEAR", "P2W", "PT6H", "PT45M", "P1M15D", "P1DT6H", "P3M", "PT1H30M", "P10D"]
US_1950, US_2100 = to_us(datetime(1950, 1, 1, tzinfo=UTC)), to_us(datetime(2100, 1, 1, tzinfo=UTC))


@settings(max_examples=300, deadline=None)
@given(
    interval=st.sampled_from(INTERVALS),
    zone=st.sampled_from(ZONES),
    anchor_us=st.integers(US_1950, US_2100),
    t_us=st.integers(US_1950, US_2100),
)
def test_periods_contain_t_and_tile_time(interval: str, zone: str, anchor_us: int, t_us: int) -> None:
    r = recurrence(interval, from_us(anchor_us), zone)
    p = r.period_at_us(t_us)
    assert p.start_us <= t_us < p.end_us
    assert p.start.tzinfo == ZoneInfo(zone) and p.end.tzinfo == ZoneInfo(zone)
    nxt = r.period_at_us(p.end_us)
    assert nxt.start_us == p.end_us  # contiguous: no gap, no overlap
    prev = r.period_at_us(p.start_us - 1)
    assert prev.end_us == p.start_us
    bounds = [to_us(r.boundary(i)) for i in range(-3, 4)]
    assert bounds == sorted(set(bounds))  # strictly increasing
