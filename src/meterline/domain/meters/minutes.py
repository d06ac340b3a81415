"""Usage counted per UTC minute, hour and day: the buckets of the live usage counters
(``ports.live_usage``), and the fewest of them that cover a range of minutes exactly."""

from __future__ import annotations

MINUTE_US = 60_000_000
HOUR = 60
DAY = 1440


def buckets(minute: int) -> tuple[str, str, str]:
    """The three buckets an event of ``minute`` (minutes since the epoch) adds to."""
    return f"m{minute}", f"h{minute // HOUR}", f"d{minute // DAY}"


def cover(start: int, end: int) -> list[str]:
    """The buckets whose minutes are exactly ``[start, end)``: whole days, then whole hours, then
    minutes at the ragged ends (at most ~200 for a month, whatever its boundaries)."""
    out: list[str] = []
    at = start
    while at < end:
        if at % DAY == 0 and at + DAY <= end:
            out.append(f"d{at // DAY}")
            at += DAY
        elif at % HOUR == 0 and at + HOUR <= end:
            out.append(f"h{at // HOUR}")
            at += HOUR
        else:
            out.append(f"m{at}")
            at += 1
    return out
