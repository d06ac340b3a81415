"""Window grids cut in any IANA time zone, as UTC epoch seconds.

A grid is the sorted list of window boundaries covering ``[start, end)``. MINUTE and HOUR
windows start where the local clock shows :00 (so +05:30 and +05:45 zones get hours that start
at :30 and :15 UTC), DAY windows at local midnight (a 23- or 25-hour day across DST) and MONTH
windows at local midnight of the 1st. The first and last windows are clipped to the query
range, so a row never claims time outside what was asked.

Rollups are kept in buckets of 60, 900 and 3600 seconds; :func:`bucket_size` picks the coarsest
bucket that every boundary falls on, so an answer is always exact.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from meterline.domain.bounded import BoundedCache
from meterline.domain.clock import known_zone
from meterline.domain.errors import InvalidInput

BUCKETS = (3600, 900, 60)


class WindowSize(enum.StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


def zone(name: str) -> ZoneInfo:
    tz = known_zone(name)
    if tz is None:
        raise InvalidInput(
            f"{name[:80]!r} is not an IANA time zone (e.g. Europe/Berlin, Asia/Kathmandu)", code="invalid_time_zone"
        )
    return tz


class TooManyWindows(InvalidInput):
    """A query would cut more windows than one answer may hold."""

    code = "too_many_windows"
    title = "Too many windows"


def grid(
    start: int, end: int, size: WindowSize | None, tz: ZoneInfo, max_windows: int | None = None
) -> tuple[int, ...]:
    """Boundaries from ``start`` to ``end`` (epoch seconds): windows are consecutive pairs.

    With ``max_windows``, a grid of more windows raises :class:`TooManyWindows` before it is
    built (MINUTE) or as soon as it passes the limit (the others), so the work and memory of
    a grid never exceed the limit whatever range was asked.
    """
    if end <= start:
        return ()
    if size is None:
        return (start, end)
    if start < _FIRST_DAY:
        raise InvalidInput("windows can be cut from 0001-01-02T00:00:00Z on", code="invalid_range")
    cap = _NO_LIMIT if max_windows is None else max_windows
    if size is WindowSize.MINUTE:
        _check_count(-(-(end - _floor(start, size, tz)) // 60), cap, size)
    _check_count((end - start) // _LONGEST[size], cap, size)  # at least this many, whatever the zone
    key = (start, end, size, tz.key)
    bounds = _GRIDS.get(key)
    if bounds is None:
        bounds = _build(start, end, size, tz, cap)
        _GRIDS.put(key, bounds)
    _check_count(len(bounds) - 1, cap, size)
    return bounds


_NO_LIMIT = 2**63
_LONGEST = {WindowSize.MINUTE: 60, WindowSize.HOUR: 2 * 3600, WindowSize.DAY: 3 * 86400, WindowSize.MONTH: 33 * 86400}
"""More than the longest window of each size in any zone (DST and date-line jumps included)."""
_GRIDS: BoundedCache[tuple[int, int, WindowSize, str], tuple[int, ...]] = BoundedCache(4096, 1 << 18, len)
"""Recent grids (they repeat on every dashboard refresh): at most 4,096 of them and 2**18
boundaries in all (about 10 MB), a single grid at most a quarter of that."""


def _build(start: int, end: int, size: WindowSize, tz: ZoneInfo, cap: int) -> tuple[int, ...]:
    bounds = [start]
    t = _floor(start, size, tz)
    if t < _FIRST_SECOND:
        t = start  # the first window began before year 1 in UTC: step on from the range's start
    while True:
        t = _next(t, size, tz)
        if t >= end:
            break
        bounds.append(t)
        if len(bounds) > cap:
            _check_count(len(bounds), cap, size)
    bounds.append(end)
    return tuple(bounds)


def _check_count(windows: int, cap: int, size: WindowSize) -> None:
    if windows > cap:
        raise TooManyWindows(
            f"the query would be cut into more than {cap} {size.value} windows (at most {cap} per answer);"
            " ask for a shorter range or a larger windowSize",
            maxWindows=cap,
        )


def floor(t: int, size: WindowSize, tz: ZoneInfo) -> int:
    """Start of the window that contains ``t``."""
    return _floor(t, size, tz)


# Times near the ends of the calendar (year 1, year 9999) have no local time or no next
# window in some zones: a window that cannot be cut starts at the range's start or ends at
# its end (the first and last windows are clipped to the range anyway). A grid starts a day
# into year 1, so every zone has a local time there and only the last window can run off.
_FAR = 2**62
_FIRST_SECOND = -62135596800  # 0001-01-01T00:00:00Z
_FIRST_DAY = _FIRST_SECOND + 86400
_OUT_OF_CALENDAR = (OverflowError, ValueError, OSError)


def _floor(t: int, size: WindowSize, tz: ZoneInfo) -> int:
    if size is WindowSize.MINUTE:
        return t - t % 60
    try:
        local = datetime.fromtimestamp(t, tz)
        if size is WindowSize.HOUR:
            start = local.replace(minute=0, second=0, microsecond=0)
            return min(int(start.timestamp()), t)
        if size is WindowSize.DAY:
            return int(datetime(local.year, local.month, local.day, tzinfo=tz).timestamp())
        return int(datetime(local.year, local.month, 1, tzinfo=tz).timestamp())
    except _OUT_OF_CALENDAR:
        return t


def _next(t: int, size: WindowSize, tz: ZoneInfo) -> int:
    if size is WindowSize.MINUTE:
        return t + 60
    if size is WindowSize.HOUR:
        candidate = _floor(t + 3600, size, tz)
        return candidate if candidate > t else t + 3600
    try:
        local = datetime.fromtimestamp(t, tz)
        if size is WindowSize.DAY:
            day = local.date() + timedelta(days=1)
            return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        return int(datetime(year, month, 1, tzinfo=tz).timestamp())
    except _OUT_OF_CALENDAR:
        return _FAR


def bucket_size(bounds: tuple[int, ...]) -> int:
    """The coarsest rollup bucket all boundaries fall on; InvalidInput if not even minutes."""
    for size in BUCKETS:
        if all(b % size == 0 for b in bounds):
            return size
    raise InvalidInput(
        "`from` and `to` must fall on whole minutes (rollups are kept per minute)", code="unaligned_range"
    )
