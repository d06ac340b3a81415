"""TIME_WEIGHTED_SUM: a reported level integrated over time, exactly.

A gauge meter's events are *readings*. A reading sets the level of its **series** (its subject
and group values) from its event time until the next reading of the same series, ordered by
(event time, ledger sequence) as LATEST orders them. Before a series' first reading its level
is 0; after its last one the level holds, across windows and billing periods (a level set in
March still counts in April), up to the time of the query (time after now has not happened).
The value of a window is the integral of the level over it, in level x seconds (a level in GB
gives GB-seconds; a rate card's ``unitSize`` turns them into GB-hours or GB-months).

**Bucket state.** Per series and rollup bucket, from the readings in the bucket only:

- ``count`` readings, the ``first`` reading's (time, seq), the ``last`` reading (time, seq,
  level), and ``inner``: the integral from the first reading to the last,
  ``sum(level_j * (t_{j+1} - t_j))``.

A bucket's state is a pure function of its own readings, so a late reading, a void or an amend
changes only the buckets that hold it (the store recomputes them from the ledger): the windows
after it see the new level through the chain of states, never through a stored delta. Two
states of one series join exactly when one lies wholly before the other (:func:`join`); when
they interleave (a late reading inside a stored bucket) the store recomputes the bucket.

**A window** ``[a, b)`` of one series: with ``L`` the level of the last reading before ``a``
(the *carry*, 0 when there is none) and the states inside the window in time order,
``L * (first_1 - a) + inner_1 + last_1 * (first_2 - last_1) + ... + last_n * (b - last_n)``.
Series add up (an integral of a sum is the sum of the integrals), so rows grouped by subject,
group value or nothing are sums over their series.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from itertools import pairwise
from typing import Any

from meterline.domain.decimals import EXACT, add, in_stored_form
from meterline.domain.meters.query import BucketState, MeterQuery, Row, Shaper, row_cap, row_order, too_many_rows

ZERO = Decimal(0)

Point = tuple[int, int, Decimal]
"""One reading: (event time in µs, ledger seq, level)."""


def area(level: Decimal, us: int) -> Decimal:
    """``level`` held for ``us`` microseconds, in level x seconds (exact)."""
    return EXACT.multiply(level, Decimal(us).scaleb(-6, EXACT))


def state_of(points: Iterable[Point]) -> list[Any]:
    """The fold state of a bucket's readings: ``[count, inner, first, None, last]`` (the
    layout of :class:`~meterline.domain.meters.fold.Fold` states, ``first`` = (time, seq))."""
    ordered = sorted(points)
    inner = ZERO
    for (t0, _, level), (t1, _, _) in pairwise(ordered):
        inner = add(inner, area(level, t1 - t0))
    return [len(ordered), in_stored_form(inner), ordered[0][:2], None, ordered[-1]]


def join(a: list[Any], b: list[Any]) -> list[Any] | None:
    """Two states of one series as one, when one lies wholly before the other; None when
    their readings interleave (only the readings themselves can say then)."""
    if tuple(a[4][:2]) < tuple(b[2]):
        early, late = a, b
    elif tuple(b[4][:2]) < tuple(a[2]):
        early, late = b, a
    else:
        return None
    gap = area(early[4][2], late[2][0] - early[4][0])
    return [early[0] + late[0], in_stored_form(add(add(early[1], late[1]), gap)), early[2], None, late[4]]


def point_state(subject: str, group_key: str, point: Point) -> BucketState:
    """One reading as a bucket state (a partial minute read from the ledger, or a carry)."""
    time_us, seq, _ = point
    return BucketState(subject, group_key, time_us // 1_000_000, 1, ZERO, None, None, point, (time_us, seq))


def integrate(states: Sequence[BucketState], windows_us: Sequence[int], now_us: int) -> list[tuple[int, Decimal]]:
    """(window index, integral) of one series over consecutive windows (boundaries in µs).
    ``states`` are in time order; those before the first window only carry their last level
    in. Time at or after ``now_us`` does not count; a window gets a value from the series'
    first reading on."""
    out: list[tuple[int, Decimal]] = []
    level: Decimal | None = None
    i = 0
    for w, (start, stop) in enumerate(pairwise(windows_us)):
        end = min(stop, now_us)
        if end <= start:
            break
        value, cursor = ZERO, start
        while i < len(states) and _first(states[i])[0] < end:
            s = states[i]
            i += 1
            assert s.latest is not None and s.total is not None
            if _first(s)[0] < start:  # wholly before the window: its last level carries in
                level = s.latest[2]
                continue
            if level is not None:
                value = add(value, area(level, _first(s)[0] - cursor))
            value = add(value, s.total)
            cursor, level = s.latest[0], s.latest[2]
        if level is not None:
            out.append((w, add(value, area(level, max(end - cursor, 0)))))
    return out


def _first(s: BucketState) -> tuple[int, int]:
    assert s.first is not None
    return s.first


def windows_us(query: MeterQuery, bounds: Sequence[int]) -> list[int]:
    """The window boundaries in µs, the first and last at the exact ``from`` / ``to``."""
    out = [b * 1_000_000 for b in bounds]
    if query.start_us is not None:
        out[0] = query.start_us
    if query.end_us is not None:
        out[-1] = query.end_us
    return out


class GaugeRows:
    """Integrates series (:meth:`add`) and sums them into one row per window, subject (if
    grouped) and group (:meth:`rows`), with the query's filters and row limit."""

    def __init__(self, query: MeterQuery, bounds: Sequence[int], dimensions: Sequence[str], now_us: int) -> None:
        self._shaper = Shaper(query, dimensions)
        self._bounds = bounds
        self._windows = windows_us(query, bounds)
        self._now = now_us
        self._cap = row_cap(query)
        self._acc: dict[tuple[Any, ...], Decimal] = {}

    def add(self, subject: str, group_key: str, states: Iterable[BucketState]) -> None:
        """One series: its carry (the last state before the range, if any) and its states in
        the range, in any order."""
        key = self._shaper.key(subject, group_key)
        if key is None:
            return
        ordered = sorted(states, key=_first)
        for w, value in integrate(ordered, self._windows, self._now):
            self._add(w, key, value)

    def add_integral(self, window: int, subject: str, group_key: str, value: Decimal) -> None:
        """The integral of series already integrated over ``window`` (an index of the grid),
        e.g. by the store: of one subject or all (``''`` when the query keeps none) and one
        group key (``'[]'`` when it keeps none)."""
        key = self._shaper.key(subject, group_key)
        if key is not None:
            self._add(window, key, value)

    def _add(self, w: int, key: tuple[Any, ...], value: Decimal) -> None:
        slot = (w, *key)
        if slot not in self._acc and len(self._acc) >= self._cap:
            raise too_many_rows(self._cap)
        self._acc[slot] = add(self._acc.get(slot, ZERO), value)

    def rows(self) -> list[Row]:
        picked = self._shaper.picked
        rows = []
        for (w, subject, groups), value in sorted(self._acc.items(), key=row_order):
            groups_by = dict(zip(picked, groups, strict=True))
            rows.append(Row(self._bounds[w], self._bounds[w + 1], subject, groups_by, in_stored_form(value)))
        return rows


def series_of(states: Iterable[BucketState]) -> dict[tuple[str, str], list[BucketState]]:
    """States grouped per series (subject, group key)."""
    out: dict[tuple[str, str], list[BucketState]] = {}
    for s in states:
        out.setdefault((s.subject, s.group_key), []).append(s)
    return out
