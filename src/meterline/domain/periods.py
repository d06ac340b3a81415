"""Recurring usage and billing periods, cut in the customer's IANA time zone.

Guarantees:

* ``boundary(k)`` is always computed from the anchor (anchor wall time + k * interval), never by
  stepping from the previous boundary, so a month anchored on the 31st gives Jan 31, Feb 28/29,
  Mar 31, Apr 30, ... and a year anchored on Feb 29 gives Feb 28 in non-leap years.
* Year, month, week and day parts are calendar steps in local wall time (``relativedelta``: months
  first, clipped to the month's last day, then days): a DAY across a DST change lasts 23 or 25 hours
  and midnight stays midnight. Time parts (``PT6H``) are exact elapsed time, added after the calendar
  part.
* A local time that does not exist (spring-forward gap) moves forward by the gap; an ambiguous
  one (fall-back) takes the first occurrence (``fold=0``). ``boundary(0)`` is the anchor instant itself.
* Periods are half-open ``[start, end)``, contiguous and non-overlapping. Boundaries are strictly
  increasing, except where a zone skipped a whole calendar day (Pacific/Apia, 2011-12-30): there a
  DAY boundary collapses onto the next and that empty period is never returned.

Compare instants with ``start_us``/``end_us`` (or ``Period`` equality, which does): Python compares
two datetimes sharing one ``ZoneInfo`` by wall time, ignoring ``fold``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo

import isodate
from dateutil.relativedelta import relativedelta

from meterline.domain.clock import known_zone, to_us
from meterline.domain.errors import InvalidInput

Interval = Literal["DAY", "WEEK", "MONTH", "YEAR"] | str

_ISO = re.compile(
    r"^P(?:\d+(?:\.\d+)?Y)?(?:\d+(?:\.\d+)?M)?(?:\d+(?:\.\d+)?W)?(?:\d+(?:\.\d+)?D)?"
    r"(?:T(?:\d+(?:\.\d+)?H)?(?:\d+(?:\.\d+)?M)?(?:\d+(?:\.\d+)?S)?)?$"
)
_MICRO = timedelta(microseconds=1)
_AVG_MONTH_US = 2_629_746_000_000  # 365.2425 / 12 days: only used to estimate k


class _Step(NamedTuple):
    months: int  # calendar months (years * 12 + months)
    days: int  # calendar days (weeks * 7 + days)
    exact_us: int  # exact elapsed microseconds (the time part)


_NAMED = {"DAY": _Step(0, 1, 0), "WEEK": _Step(0, 7, 0), "MONTH": _Step(1, 0, 0), "YEAR": _Step(12, 0, 0)}


def _bad_interval(value: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"{value!r} is not a valid interval: {why} (use DAY, WEEK, MONTH, YEAR or an ISO-8601 duration like P2W)",
        code="invalid_interval",
    )


@lru_cache(maxsize=256)
def _parse(value: str) -> _Step:
    upper = value.strip().upper()
    if upper in _NAMED:
        return _NAMED[upper]
    if not _ISO.match(upper):
        why = "negative durations are not allowed" if upper.startswith("-") else "not an ISO-8601 duration"
        raise _bad_interval(value, why)
    date_part, _, time_part = upper.partition("T")
    if "." in date_part:
        raise _bad_interval(value, "years, months, weeks and days must be whole numbers")
    try:
        step = _split(date_part, time_part)
    except (OverflowError, ValueError, isodate.ISO8601Error):
        raise _bad_interval(value, "the duration is too large") from None
    if step.months == 0 and step.days == 0 and step.exact_us <= 0:
        raise _bad_interval(value, "the duration must be longer than zero")
    if step.months > 1200 or step.days > 36_525 or step.exact_us > 100 * 366 * 86_400_000_000:
        raise _bad_interval(value, "the duration is longer than 100 years")
    return step


def _split(date_part: str, time_part: str) -> _Step:
    calendar = isodate.parse_duration(date_part + "T0S" if date_part == "P" else date_part)
    months = int(getattr(calendar, "years", 0)) * 12 + int(getattr(calendar, "months", 0))
    days = calendar.days if isinstance(calendar, timedelta) else calendar.tdelta.days
    exact = isodate.parse_duration("PT" + time_part) if time_part else timedelta(0)
    return _Step(months, days, exact // _MICRO)


def _format(step: _Step) -> str:
    for name, named in _NAMED.items():
        if step == named:
            return name
    years, months = divmod(step.months, 12)
    weeks, rest = divmod(step.days, 7)
    out = "P" + (f"{years}Y" if years else "") + (f"{months}M" if months else "")
    out += f"{weeks}W" if step.days and not rest else (f"{step.days}D" if step.days else "")
    if step.exact_us:
        hours, us = divmod(step.exact_us, 3_600_000_000)
        minutes, us = divmod(us, 60_000_000)
        seconds = f"{us // 1_000_000}.{us % 1_000_000:06d}".rstrip("0").rstrip(".")
        out += "T" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
        out += f"{seconds}S" if us else ""
    return out


def parse_interval(value: str) -> str:
    """Validate an interval and return its normal form.

    Accepts DAY/WEEK/MONTH/YEAR (any case) or a positive ISO-8601 duration. ``P1D`` becomes DAY,
    ``P1W``/``P7D`` WEEK, ``P1M`` MONTH, ``P1Y``/``P12M`` YEAR; other durations come back in one
    canonical spelling (``P14D`` -> ``P2W``, ``PT90M`` -> ``PT1H30M``), so equal intervals are equal
    strings. Fractions are allowed only in the time part. Raises ``InvalidInput`` (code
    ``invalid_interval``) otherwise.
    """
    return _format(_parse(value))


def at_least_a_day(value: str) -> bool:
    """Whether every period of the (valid) interval ``value`` spans at least one day."""
    step = _parse(value)
    return step.months > 0 or step.days > 0 or step.exact_us >= 86_400_000_000


def _zone(name: str) -> ZoneInfo:
    tz = known_zone(name)
    if tz is None:
        raise InvalidInput(f"{name[:80]!r} is not a known IANA time zone", code="invalid_zone")
    return tz


def _aware(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidInput(f"{what} must carry a time zone (got {t.isoformat()})", code="invalid_datetime")
    return t


@dataclass(frozen=True, slots=True, eq=False)
class Period:
    """A half-open period ``[start, end)``; both ends are aware datetimes in the recurrence's zone.

    Two periods are equal when they cover the same instants.
    """

    start: datetime
    end: datetime

    @property
    def start_us(self) -> int:
        """``start`` as microseconds since the Unix epoch (UTC)."""
        return to_us(self.start)

    @property
    def end_us(self) -> int:
        """``end`` as microseconds since the Unix epoch (UTC)."""
        return to_us(self.end)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Period):
            return NotImplemented
        return (self.start_us, self.end_us) == (other.start_us, other.end_us)

    def __hash__(self) -> int:
        return hash((self.start_us, self.end_us))


@dataclass(frozen=True, slots=True)
class Recurrence:
    """Periods of ``interval`` repeating from ``anchor``, cut in the IANA zone ``zone``.

    Build it with :func:`recurrence`, which normalises the interval; direct construction validates too.
    """

    interval: str
    anchor: datetime
    zone: str

    def __post_init__(self) -> None:
        if parse_interval(self.interval) != self.interval:
            raise _bad_interval(self.interval, f"not in normal form (use {parse_interval(self.interval)!r})")
        _zone(self.zone)
        _aware(self.anchor, "the anchor")

    def boundary(self, k: int) -> datetime:
        """The k-th boundary (k may be negative): anchor wall time + k * interval, resolved in the zone."""
        zone, step = _zone(self.zone), _parse(self.interval)
        anchor = self.anchor.astimezone(zone)
        if k == 0:
            return anchor
        try:
            if step.months or step.days:
                wall = anchor.replace(tzinfo=None) + relativedelta(months=k * step.months, days=k * step.days)
                # fold=0: a gap time reads with the pre-transition offset (so moves forward by the gap),
                # an ambiguous time means its first occurrence.
                utc = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
            else:
                utc = anchor.astimezone(UTC)
            return (utc + timedelta(microseconds=k * step.exact_us)).astimezone(zone)
        except (OverflowError, ValueError):
            raise InvalidInput(
                f"boundary {k} is outside the supported date range", code="period_out_of_range"
            ) from None

    def period_at(self, t: datetime) -> Period:
        """The period containing ``t`` (which may lie before the anchor): ``start <= t < end``.

        O(1): k is estimated from the elapsed time and an average step length, then corrected by a
        step or two.
        """
        return self.period_at_us(to_us(_aware(t, "the instant")))

    def period_at_us(self, t_us: int) -> Period:
        """The period containing ``t_us`` (microseconds since the Unix epoch, UTC)."""
        step = _parse(self.interval)
        average = step.months * _AVG_MONTH_US + step.days * 86_400_000_000 + step.exact_us
        k = (t_us - to_us(self.anchor)) // average
        while to_us(self.boundary(k)) > t_us:
            k -= 1
        while to_us(self.boundary(k + 1)) <= t_us:
            k += 1
        return Period(self.boundary(k), self.boundary(k + 1))


def recurrence(interval: str, anchor: datetime, zone: str) -> Recurrence:
    """A validated :class:`Recurrence`: the interval normalised, the anchor shown in ``zone``.

    Raises ``InvalidInput`` for a bad interval (``invalid_interval``), an unknown zone
    (``invalid_zone``) or a naive anchor (``invalid_datetime``).
    """
    tz = _zone(zone)
    return Recurrence(parse_interval(interval), _aware(anchor, "the anchor").astimezone(tz), zone)


__all__ = ["Interval", "Period", "Recurrence", "parse_interval", "recurrence"]
