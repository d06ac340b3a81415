"""A fixed history of metered events and what every query over it must answer, computed here
from the events alone (not from any store): the expectations of the UsageStore contract."""

from __future__ import annotations

import decimal
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery
from meterline.domain.meters.sketch import Sketch
from meterline.domain.meters.windows import WindowSize, floor, grid

NS = "default"
WIDE = decimal.Context(prec=200)
AVERAGE = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)
_as_numbers = msgspec.json.Encoder(decimal_format="number")


def spec(aggregation: Aggregation) -> MeterSpec:
    value = {
        Aggregation.COUNT: None,
        Aggregation.UNIQUE_COUNT: "$.user",
        Aggregation.APPROX_UNIQUE_COUNT: "$.user",
    }.get(aggregation, "$.v")
    return MeterSpec(
        slug=aggregation.value.lower(),
        event_type="t",
        aggregation=aggregation,
        value_property=value,
        group_by={"region": "$.region"},
    )


@dataclass(frozen=True)
class Sent:
    """One event of the history; ``seq`` is its ledger position (events are appended in order)."""

    seq: int
    subject: str
    time_us: int
    value: Decimal
    region: str | None
    user: str

    def body(self) -> bytes:
        data: dict[str, Any] = {"v": self.value, "user": self.user}
        if self.region is not None:
            data["region"] = self.region
        iso = datetime.fromtimestamp(self.time_us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event = {"specversion": "1.0", "id": f"e{self.seq}", "source": "src", "type": "t",
                 "subject": self.subject, "time": iso, "data": data}  # fmt: skip
        # Half the values travel as JSON numbers, half as numeric strings.
        return _as_numbers.encode(event) if self.seq % 2 else msgspec.json.encode(event)


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * 1_000_000


def _quantity(rng: random.Random) -> Decimal:
    """Up to 18 digits before and 18 after the point, either sign."""
    whole = rng.choice([0, rng.randrange(10**18), rng.randrange(1000)])
    fraction = rng.choice([0, rng.randrange(10**18), 5 * 10**17])
    sign = rng.choice(["", "", "-"])
    return Decimal(f"{sign}{whole}.{fraction:018d}")


# Instants that matter: a New York DST end (2025-11-02 06:00Z), Kathmandu's :15 hours, month
# ends in every zone, and one busy hour with two events at the same microsecond (LATEST ties).
_ANCHORS = [
    "2025-10-31T23:59:59+00:00",
    "2025-11-01T00:00:00+00:00",
    "2025-11-02T05:30:00+00:00",
    "2025-11-02T06:30:00+00:00",
    "2025-11-30T18:14:59+00:00",
    "2025-11-30T18:15:00+00:00",
    "2026-01-31T23:59:00+00:00",
    "2026-02-01T04:59:59+00:00",
]
BUSY = _us("2026-02-10T08:00:00+00:00")
"""Start of an hour with many events, for MINUTE windows."""


def history(n: int = 90, seed: int = 9) -> list[Sent]:
    rng = random.Random(seed)
    times = [_us(a) + rng.randrange(1_000_000) for a in _ANCHORS]
    times += [BUSY + rng.randrange(3_600_000_000) for _ in range(20)]
    start, end = _us("2025-10-01T00:00:00+00:00"), _us("2026-02-28T00:00:00+00:00")
    times += [rng.randrange(start, end) for _ in range(n - len(times) - 2)]
    times += [times[-1], times[-1]]  # the same instant twice: the later seq is LATEST
    return [
        Sent(
            i + 1,
            f"c{rng.randrange(3)}",
            t,
            _quantity(rng),
            rng.choice(["eu", "us", "ap", None]),
            f"u{rng.randrange(7)}",
        )
        for i, t in enumerate(times)
    ]


END = _us("2026-03-01T00:00:00+00:00") // 1_000_000
"""Every query ends here (after every event, before the clock's now)."""
ZONES = ["UTC", "Asia/Kathmandu", "America/New_York", "Asia/Kolkata"]


def queries(tz: str) -> Iterable[MeterQuery]:
    """Every window size (MINUTE over the busy hour and a bit), each grouping and filter."""
    zone = ZoneInfo(tz)
    shapes: list[dict[str, Any]] = [
        {},
        {"group_by": ("subject",)},
        {"group_by": ("region",)},
        {"group_by": ("subject", "region")},
        {"subjects": ("c1", "c2")},
        {"subjects": ("c1", "c2"), "combine_subjects": True, "group_by": ("region",)},
        {"filters": (("region", ("eu", "ap"), False),), "group_by": ("subject",)},
        {"filters": (("region", ("eu",), True), ("subject", ("c0",), False))},
    ]
    busy = BUSY // 1_000_000
    ranges: list[dict[str, Any]] = [
        {"start": busy - 600, "end": busy + 4200, "window_size": WindowSize.MINUTE},
        {"end": END, "window_size": WindowSize.HOUR},
        {"end": END, "window_size": WindowSize.DAY},
        {"end": END, "window_size": WindowSize.MONTH},
        {"start": busy - 86_400 * 40, "end": busy + 900},
    ]
    for r in ranges:
        for shape in shapes:
            yield MeterQuery(tz=zone, **r, **shape)


def window(t_us: int, query: MeterQuery, first: int) -> int:
    """Where an event's window starts: local :00, midnight or the 1st, clipped to the range."""
    t = t_us // 1_000_000
    local = datetime.fromtimestamp(t, query.tz)
    size = query.window_size
    if size is WindowSize.MINUTE:
        start = t - t % 60
    elif size is WindowSize.HOUR:
        start = int(local.replace(minute=0, second=0).timestamp())
    elif size is WindowSize.DAY:
        start = int(datetime(local.year, local.month, local.day, tzinfo=query.tz).timestamp())
    elif size is WindowSize.MONTH:
        start = int(datetime(local.year, local.month, 1, tzinfo=query.tz).timestamp())
    else:
        start = first
    return max(start, first)


def expected(aggregation: Aggregation, events: list[Sent], query: MeterQuery) -> dict[tuple[Any, ...], Decimal]:
    """The answer, keyed like :func:`answer`, from the events alone."""
    first = query.start if query.start is not None else min(e.time_us for e in events) // 1_000_000
    by_subject = "subject" in query.group_by or (bool(query.subjects) and not query.combine_subjects)
    groups: dict[tuple[Any, ...], list[Sent]] = {}
    for e in events:
        t = e.time_us // 1_000_000
        if not first <= t < (query.end or END) or (query.subjects and e.subject not in query.subjects):
            continue
        if not all(((e.subject if d == "subject" else e.region) in v) != neg for d, v, neg in query.filters):
            continue
        region = (("region", e.region),) if "region" in query.group_by else ()
        key = (window(e.time_us, query, _floor_first(first, query)), e.subject if by_subject else None, region)
        groups.setdefault(key, []).append(e)
    return {k: value_of(aggregation, v) for k, v in groups.items()}


def _floor_first(first: int, query: MeterQuery) -> int:
    # An open start begins with the window holding the first event; an explicit one clips.
    return first if query.start is not None else 0


def value_of(aggregation: Aggregation, events: list[Sent]) -> Decimal:
    values = [e.value for e in events]
    total = Decimal(0)
    for v in values:
        total = WIDE.add(total, v)
    return {
        Aggregation.COUNT: Decimal(len(values)),
        Aggregation.SUM: total,
        Aggregation.AVG: AVERAGE.divide(total, Decimal(len(values))),
        Aggregation.MIN: min(values),
        Aggregation.MAX: max(values),
        Aggregation.LATEST: max(events, key=lambda e: (e.time_us, e.seq)).value,
        Aggregation.UNIQUE_COUNT: Decimal(len({e.user for e in events})),
        Aggregation.APPROX_UNIQUE_COUNT: Decimal(_sketch({e.user for e in events}).estimate()),
    }[aggregation]


def _sketch(values: set[str]) -> Sketch:
    """The HyperLogLog sketch of a set of values: a function of the set, so every store must
    answer exactly its estimate."""
    out = Sketch()
    for v in values:
        out.add(v)
    return out


def expected_gauge(events: list[Sent], query: MeterQuery) -> dict[tuple[Any, ...], Decimal]:
    """TIME_WEIGHTED_SUM, keyed like :func:`answer`: per window, each series' level (its latest
    reading so far, 0 before the first) integrated directly over the window, in level x
    seconds, summed per row; a series makes a row from its first reading on."""
    first_hour = min(e.time_us for e in events) // 3_600_000_000 * 3600
    start, end = query.start, query.end or END
    if start is None:
        start = floor(first_hour, query.window_size, query.tz) if query.window_size else first_hour
    bounds = grid(start, end, query.window_size, query.tz)
    by_subject = "subject" in query.group_by or (bool(query.subjects) and not query.combine_subjects)
    wanted = [
        e
        for e in events
        if (not query.subjects or e.subject in query.subjects)
        and all(((e.subject if d == "subject" else e.region) in v) != neg for d, v, neg in query.filters)
    ]
    series = gauge_series(wanted)
    out: dict[tuple[Any, ...], Decimal] = {}
    for (subject, region), readings in series.items():
        group = (("region", region),) if "region" in query.group_by else ()
        for a, b in itertools.pairwise(bounds):
            area = integral(readings, a * 1_000_000, b * 1_000_000)
            if area is not None:
                key = (a, subject if by_subject else None, group)
                out[key] = WIDE.add(out.get(key, Decimal(0)), area)
    return out


def gauge_series(events: list[Sent]) -> dict[tuple[str, str | None], list[Sent]]:
    """The readings of each series (subject, region) in (time, seq) order."""
    series: dict[tuple[str, str | None], list[Sent]] = {}
    for e in sorted(events, key=lambda e: (e.time_us, e.seq)):
        series.setdefault((e.subject, e.region), []).append(e)
    return series


def integral(readings: list[Sent], a_us: int, b_us: int) -> Decimal | None:
    """One series' level over ``[a_us, b_us)`` in level x seconds: each reading's value over
    the overlap of [its time, the next reading's time) with the range; None before its first."""
    if not readings or readings[0].time_us >= b_us:
        return None
    area = Decimal(0)
    for r, until in zip(readings, [*(n.time_us for n in readings[1:]), b_us], strict=True):
        lo, hi = max(r.time_us, a_us), min(until, b_us)
        if hi > lo:
            area = WIDE.add(area, WIDE.multiply(r.value, Decimal(hi - lo)))
    return area.scaleb(-6, WIDE)


def answer(rows: Iterable[Any]) -> dict[tuple[Any, ...], Decimal]:
    return {(r.window_start, r.subject, tuple(sorted(r.group_by.items()))): r.value for r in rows}
