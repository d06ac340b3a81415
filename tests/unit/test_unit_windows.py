"""Window grids (domain.meters.windows), directly: zones with odd offsets, DST days, month
ends, clipping, bucket sizes and the window cap."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from meterline.domain.errors import InvalidInput
from meterline.domain.meters.windows import TooManyWindows, WindowSize, bucket_size, floor, grid, zone


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def local(t: int, tz: str) -> str:
    return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat()


def test_empty_and_unwindowed_ranges() -> None:
    utc = ZoneInfo("UTC")
    assert grid(100, 100, WindowSize.HOUR, utc) == ()
    assert grid(200, 100, WindowSize.HOUR, utc) == ()
    assert grid(60, 600, None, utc) == (60, 600)


@pytest.mark.parametrize(
    ("tz", "first_boundary"),
    [("Asia/Kolkata", "2026-03-01T01:30:00+05:30"), ("Asia/Kathmandu", "2026-03-01T01:15:00+05:45")],
)
def test_hours_start_at_local_full_hours(tz: str, first_boundary: str) -> None:
    start = ts("2026-03-01T00:00:00+05:30") if tz == "Asia/Kolkata" else ts("2026-03-01T00:00:00+05:45")
    bounds = grid(start - 30 * 60, start + 3 * 3600, WindowSize.HOUR, zone(tz))
    # the first window is clipped to the range; the next boundary is the next local :00
    assert bounds[0] == start - 30 * 60
    assert all(datetime.fromtimestamp(b, ZoneInfo(tz)).minute == 0 for b in bounds[1:-1])
    assert bounds[-1] == start + 3 * 3600


def test_days_across_dst_are_23_and_25_hours() -> None:
    berlin = zone("Europe/Berlin")
    spring = grid(ts("2026-03-28T00:00:00+01:00"), ts("2026-03-31T00:00:00+02:00"), WindowSize.DAY, berlin)
    assert [b - a for a, b in itertools.pairwise(spring)] == [86400, 23 * 3600, 86400]
    autumn = grid(ts("2026-10-24T00:00:00+02:00"), ts("2026-10-27T00:00:00+01:00"), WindowSize.DAY, berlin)
    assert [b - a for a, b in itertools.pairwise(autumn)] == [86400, 25 * 3600, 86400]
    assert all(datetime.fromtimestamp(b, ZoneInfo("Europe/Berlin")).hour == 0 for b in autumn)


def test_months_start_on_the_first_at_local_midnight() -> None:
    ny = zone("America/New_York")
    bounds = grid(ts("2026-01-15T00:00:00-05:00"), ts("2026-04-15T00:00:00-04:00"), WindowSize.MONTH, ny)
    assert [local(b, "America/New_York") for b in bounds] == [
        "2026-01-15T00:00:00-05:00",
        "2026-02-01T00:00:00-05:00",
        "2026-03-01T00:00:00-05:00",
        "2026-04-01T00:00:00-04:00",
        "2026-04-15T00:00:00-04:00",
    ]


def test_floor_finds_the_window_start() -> None:
    t = ts("2026-07-04T13:47:12+00:00")
    assert floor(t, WindowSize.MINUTE, ZoneInfo("UTC")) == ts("2026-07-04T13:47:00+00:00")
    assert floor(t, WindowSize.HOUR, zone("Asia/Kathmandu")) == ts("2026-07-04T13:15:00+00:00")
    assert floor(t, WindowSize.DAY, zone("Asia/Tokyo")) == ts("2026-07-04T15:00:00+00:00") - 86400
    assert floor(t, WindowSize.MONTH, ZoneInfo("UTC")) == ts("2026-07-01T00:00:00+00:00")


def test_bucket_size_is_the_coarsest_exact_one() -> None:
    assert bucket_size((0, 3600, 7200)) == 3600
    assert bucket_size((0, 900, 3600)) == 900
    assert bucket_size((0, 60, 5400 + 60)) == 60
    with pytest.raises(InvalidInput) as err:
        bucket_size((0, 61))
    assert err.value.code == "unaligned_range"


def test_window_cap_refuses_before_building() -> None:
    utc = ZoneInfo("UTC")
    start = ts("2000-01-01T00:00:00+00:00")
    with pytest.raises(TooManyWindows):
        grid(start, start + 100 * 365 * 86400, WindowSize.MINUTE, utc, max_windows=50_000)
    with pytest.raises(TooManyWindows):
        grid(start, start + 10 * 365 * 86400, WindowSize.HOUR, utc, max_windows=1000)
    assert len(grid(start, start + 86400, WindowSize.HOUR, utc, max_windows=24)) == 25


def test_unknown_zone_is_a_specific_error() -> None:
    with pytest.raises(InvalidInput) as err:
        zone("Mars/Olympus_Mons")
    assert err.value.code == "invalid_time_zone"


def test_grid_before_year_one_is_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        grid(-62135596800, 0, WindowSize.DAY, ZoneInfo("UTC"))
    assert err.value.code == "invalid_range"
