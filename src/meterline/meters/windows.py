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
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meterline.errors import InvalidInput

BUCKETS = (3600, 900, 60)


class WindowSize(enum.StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"{name!r} is not an IANA time zone (e.g. Europe/Berlin, Asia/Kathmandu)", code="invalid_time_zone"
        ) from None


def grid(start: int, end: int, size: WindowSize | None, tz: ZoneInfo) -> tuple[int, ...]:
    """Boundaries from ``start`` to ``end`` (epoch seconds): windows are consecutive pairs."""
    if end <= start:
        return ()
    if size is None:
        return (start, end)
    return _grid(start, end, size, tz.key)


@lru_cache(maxsize=4096)
def _grid(start: int, end: int, size: WindowSize, key: str) -> tuple[int, ...]:
    tz = ZoneInfo(key)
    bounds = [start]
    t = _floor(start, size, tz)
    while True:
        t = _next(t, size, tz)
        if t >= end:
            break
        bounds.append(t)
    bounds.append(end)
    return tuple(bounds)


def floor(t: int, size: WindowSize, tz: ZoneInfo) -> int:
    """Start of the window that contains ``t``."""
    return _floor(t, size, tz)


def _floor(t: int, size: WindowSize, tz: ZoneInfo) -> int:
    if size is WindowSize.MINUTE:
        return t - t % 60
    local = datetime.fromtimestamp(t, tz)
    if size is WindowSize.HOUR:
        start = local.replace(minute=0, second=0, microsecond=0)
        return min(int(start.timestamp()), t)
    if size is WindowSize.DAY:
        return int(datetime(local.year, local.month, local.day, tzinfo=tz).timestamp())
    return int(datetime(local.year, local.month, 1, tzinfo=tz).timestamp())


def _next(t: int, size: WindowSize, tz: ZoneInfo) -> int:
    if size is WindowSize.MINUTE:
        return t + 60
    if size is WindowSize.HOUR:
        candidate = _floor(t + 3600, size, tz)
        return candidate if candidate > t else t + 3600
    local = datetime.fromtimestamp(t, tz)
    if size is WindowSize.DAY:
        day = local.date() + timedelta(days=1)
        return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return int(datetime(year, month, 1, tzinfo=tz).timestamp())


def bucket_size(bounds: tuple[int, ...]) -> int:
    """The coarsest rollup bucket all boundaries fall on; InvalidInput if not even minutes."""
    for size in BUCKETS:
        if all(b % size == 0 for b in bounds):
            return size
    raise InvalidInput(
        "`from` and `to` must fall on whole minutes (rollups are kept per minute)", code="unaligned_range"
    )
