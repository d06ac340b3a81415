"""Time, injected: domain code never calls ``datetime.now`` itself."""

from __future__ import annotations

import functools
import time
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now_us(self) -> int:
        """Microseconds since the Unix epoch, UTC."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1000


class FixedClock:
    """A clock tests can set and advance."""

    def __init__(self, now_us: int) -> None:
        self._now = now_us

    def now_us(self) -> int:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += int(seconds * 1_000_000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def to_us(t: datetime) -> int:
    """Microseconds since the epoch for an aware datetime."""
    return (t - _EPOCH) // _MICRO


def from_us(us: int) -> datetime:
    """The UTC datetime for microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=us)


@functools.lru_cache(maxsize=8192)  # period bounds and window starts repeat on every answer
def rfc3339(us: int) -> str:
    """RFC 3339 in UTC with millisecond precision, or microseconds when they are not zero."""
    # isoformat, not strftime: strftime("%Y") writes the year 344 as "344", not "0344"
    t = from_us(us).replace(tzinfo=None)
    return t.isoformat(timespec="microseconds" if us % 1000 else "milliseconds") + "Z"


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def known_zone(name: str) -> zoneinfo.ZoneInfo | None:
    """The IANA time zone called ``name``, or None. Never raises: the name may come straight from
    a request, and only names of the installed zone database are ever opened as files."""
    if len(name) > 64 or name not in _zone_names():
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None
