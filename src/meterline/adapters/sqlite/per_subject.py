"""Per-subject usage over long ranges, folded by SQLite in one statement.

A query per subject over months (top customers, feature adoption, a meter query grouped by
subject) is covered by :func:`summaries.plan` with the subjects' month rows, day rows and, at
a zone's ragged edges, hour and quarter-hour rollups: several row sets per subject. Reading
each set into Python and merging there costs a Python object per subject and set, and an
exact-decimal Python aggregate call per row; with thousands of customers that was most of
the executive view's time.

:func:`fold_subjects` reads every set in one compound statement instead: each set folded per
subject in its index order (no sort), then the sets folded per subject and window, with
SQLite's own integer ``sum``/``min``/``max`` for integral values (stored as integers below
2**62: ``domain.decimals.stored``) and the exact decimal aggregates of ``schema.py`` only for
the others. Python then sees one state per subject and window. The values are the same as
merging the sets' states one by one (exact sums, and minima/maxima of the same stored values),
so every answer stays what it was. A native sum that would overflow makes SQLite raise; the
caller then reads the sets one by one as before.

For SUM, COUNT and AVG (values that add up) over one window, :func:`cheapest` may cover
the window by whole UTC months *minus* what lies outside it: a range from 2025-03-01 in
New York starts at 05:00 UTC, and its first UTC month is then read as the month's row minus
five hours of rollups, instead of 19 hours of rollups plus 30 day rows (every set is one index
seek per subject, and day sets are the densest). A subtracted set's counts and totals are
negated in the statement (exact: integers natively, the others through ``dec_neg``), and a
subject whose count comes to 0 had no event in the window (every stored row counts at least
one) and is left out, as it is when its rows are read directly.
A ragged edge is read from its shorter side (:func:`short_edges`): a range starting at
05:00 UTC is its first UTC day's rows minus five hours of rollups, not 19 hours of rollups.

Those edges are sparse: a few hours hold the rows of a few hundred subjects of 10,000, yet
a read per subject costs an index seek for each of them. A rollup set whose range holds few
events for its subjects (:func:`by_time`) is read through ``rollups_by_time`` (the quarter-hour
rollups keyed by meter and time) instead: only the rows present, each subject checked against
the meter's subjects, at quarter-hour level (every rollup level holds every bucket).
A set of few day rows per subject (a partial month's days: :func:`days_by_time`) is read the
same way through ``summaries_days_by_time``, the day rows keyed by meter, day and subject,
which holds their values (a read by time never visits the table).

The meter-wide rows of a query's windows (:func:`fold_wide`) are folded by SQLite the same
way, one state per window instead of one per stored bucket (a year by day in New York is 24
hour rows a day).

LATEST (a state per row) is not folded here.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal

from meterline.adapters.sqlite.summaries import DAY, MONTH, QUARTER, month_of, next_month
from meterline.domain.decimals import add
from meterline.domain.meters.model import Aggregation
from meterline.domain.meters.query import BucketState

Part = tuple[str, int, int, int, int, int]
"""One row set: (table, level, first bucket, last bucket (excluded), window tag, sign: 1, or
-1 for a set subtracted from the others, :func:`cheapest`)."""
SUBTRACTABLE = frozenset({Aggregation.COUNT, Aggregation.SUM, Aggregation.AVG})
"""The aggregations whose sets may be subtracted: their counts and totals add up."""

_KEPT = {
    Aggregation.COUNT: (),
    Aggregation.SUM: ("total",),
    Aggregation.AVG: ("total",),
    Aggregation.MIN: ("low",),
    Aggregation.MAX: ("high",),
}
"""The stored columns each aggregation folds besides the count."""
FOLDED = frozenset(_KEPT)
"""The aggregations :func:`fold_subjects` answers."""
_FUNCTIONS = {"total": ("sum", "dec_sum"), "low": ("min", "dec_least"), "high": ("max", "dec_greatest")}
_OUTER = (
    "SELECT subject, w, sum(c), sum(total_n), dec_sum(total_x) FILTER (WHERE total_x IS NOT NULL),"
    " min(low_n), dec_least(low_x) FILTER (WHERE low_x IS NOT NULL),"
    " max(high_n), dec_greatest(high_x) FILTER (WHERE high_x IS NOT NULL)"
    " FROM ({parts}) GROUP BY subject, w"
)
MAX_PARTS = 200
"""Row sets per statement (SQLite allows 500 terms in a compound SELECT)."""
MAX_PARAMETERS = 30_000
"""Bound parameters per statement (SQLite allows 32,766)."""


def _columns(aggregation: Aggregation, sign: int = 1) -> str:
    """A row set's folded columns, named for the outer fold: per stored column its integral
    values summed (or compared) natively and the others exactly; NULL where not kept; counts
    and totals negated for a subtracted set (``sign`` -1: SUBTRACTABLE aggregations only)."""
    out = []
    for col, (native, exact) in _FUNCTIONS.items():
        if col in _KEPT[aggregation]:
            n = f"{native}({col}) FILTER (WHERE typeof({col}) = 'integer')"
            x = f"{exact}({col}) FILTER (WHERE typeof({col}) <> 'integer')"
            if sign < 0:
                n, x = f"-({n})", f"dec_neg({x})"
            out.append(f"{n} AS {col}_n, {x} AS {col}_x")
        else:
            out.append(f"NULL AS {col}_n, NULL AS {col}_x")
    return ", ".join(out)


def cheapest(a: int, b: int, cover: Callable[[int, int, int], list[Part]]) -> list[Part]:
    """The row sets of one window ``[a, b)`` (quarter-hour aligned, holding a whole UTC day)
    for a SUBTRACTABLE aggregation: of its direct cover and the covers that widen a ragged
    edge to its UTC month's boundary and subtract the part outside the window, the one with
    the fewest sets, then the fewest day rows (the direct cover on a tie). ``cover(first,
    last, sign)``: the sets of ``[first, last)`` with that sign."""
    month_a = month_of(a)
    month_b = b if month_of(b) == b else next_month(month_of(b))
    best: list[Part] = cover(a, b, 1)
    cost = _cost(best)
    for first, last in ((month_a, b), (a, month_b), (month_a, month_b)):
        if (first, last) == (a, b):
            continue
        parts = cover(first, last, 1)
        if first != a:
            parts += cover(first, a, -1)
        if last != b:
            parts += cover(b, last, -1)
        if _cost(parts) < cost:
            best, cost = parts, _cost(parts)
    return best


SHORT_EDGE = DAY // 2
"""A ragged edge whose rollups would span more than this much of its UTC day is read as the
whole day minus the rest of it (:func:`short_edges`)."""


def short_edges(a: int, b: int) -> list[tuple[int, int, int]]:
    """``[a, b)`` (quarter-hour aligned) as signed ranges whose ragged edges are read from at
    most :data:`SHORT_EDGE` of rollups, for a SUBTRACTABLE aggregation: a range starting at
    05:00 UTC (midnight in New York) is its whole first UTC day, from the day rows, minus the
    five hours before 05:00 (``(first, a, -1)``), instead of the 19 hours after it; an end
    late in its day likewise (``(b, last, -1)``). Each set of rollups costs by the events it
    holds (read by time) or by the subjects (read per subject), and a whole day is one more
    row in a day set, so the shorter piece is the cheaper one. A range within one UTC day is
    left as it is. ``(first, last, 1)`` comes first."""
    first, last, out = a, b, []
    if a // DAY != (b - 1) // DAY:
        if a % DAY and DAY - a % DAY > SHORT_EDGE:
            first = a - a % DAY
            out.append((first, a, -1))
        if b % DAY and b % DAY > SHORT_EDGE:
            last = b - b % DAY + DAY
            out.append((b, last, -1))
    return [(first, last, 1), *out]


def occupied(conn: sqlite3.Connection, meter: int, parts: Sequence[Part]) -> list[Part]:
    """The sets of ``parts`` that may hold rows: a set whose range holds no meter-wide summary
    row holds no subject's row either (both are folded from the same quarter-hour states, in
    the same write), so reading it costs an index seek per subject for nothing; a range
    before the first event or after the last is common (a year back for a young tenant, a
    period that ends in the future). One short index range each."""
    return [part for part in parts if _any_wide(conn, meter, part)]


def _any_wide(conn: sqlite3.Connection, meter: int, part: Part) -> bool:
    _, level, first, last, _, _ = part
    wide = DAY if level == MONTH else level  # a month set's days; the rollups' own level
    row = conn.execute(
        "SELECT 1 FROM summaries WHERE meter = ? AND level = ? AND subject = '' AND bucket >= ? AND bucket < ? LIMIT 1",
        (meter, wide, first, last),
    ).fetchone()
    return row is not None


def _cost(parts: Sequence[Part]) -> tuple[int, int]:
    """Sets (one index seek per subject each), then day rows spanned."""
    return len(parts), sum((last - first) // DAY for _, level, first, last, _, _ in parts if level == DAY)


def fold_subjects(
    conn: sqlite3.Connection,
    aggregation: Aggregation,
    meter: int,
    parts: Sequence[Part],
    subjects: tuple[str, ...] = (),
) -> list[BucketState] | None:
    """One state per subject (every subject of the meter, or only ``subjects``) and window
    tag (the state's ``bucket``) folded from ``parts``; None when a native sum overflowed."""
    size = max(1, min(MAX_PARTS, MAX_PARAMETERS // (5 + len(subjects))))
    out: list[BucketState] = []
    try:
        for i in range(0, len(parts), size):
            out += map(_state, _fold(conn, aggregation, meter, parts[i : i + size], subjects))
    except sqlite3.OperationalError as exc:
        if "overflow" not in str(exc):
            raise
        return None
    if len(parts) > size:
        out = _merged(out)
    if any(part[5] < 0 for part in parts):
        out = [s for s in out if s.count]
    return out


MAX_SEGMENTS = 5000
"""Segments per statement of :func:`fold_wide` (four bound parameters each)."""


def fold_wide(
    conn: sqlite3.Connection,
    aggregation: Aggregation,
    meter: int,
    segments: Sequence[tuple[int, int, int]],
    inner: Sequence[int],
) -> list[BucketState] | None:
    """The meter-wide summary rows of ``segments`` (:func:`summaries.plan` of ``inner``: none
    crosses a window boundary) folded by SQLite into one state per window of ``inner`` (its
    ``bucket``: the window's start), as merging the rows one by one gives; None for LATEST,
    for more than :data:`MAX_SEGMENTS` segments and when a native sum overflowed (the caller
    then reads the rows). A year by day in a zone off UTC is 24 hour rows per day: 8,760 rows
    per meter that Python would turn into states and merge, 365 states here."""
    if aggregation not in _KEPT or not segments or len(segments) > MAX_SEGMENTS:
        return None
    params: list[object] = []
    for level, first, last in segments:
        params += [inner[bisect.bisect_right(inner, first) - 1], level, first, last]
    sql = (
        f"WITH seg(w, level, a, b) AS (VALUES {','.join(['(?,?,?,?)'] * len(segments))})"
        f" SELECT '', seg.w, sum(s.cnt), {_columns(aggregation)} FROM seg JOIN summaries AS s"
        " ON s.meter = ? AND s.level = seg.level AND s.subject = '' AND s.bucket >= seg.a AND s.bucket < seg.b"
        " GROUP BY seg.w"
    )
    try:
        return [_state(row) for row in conn.execute(sql, (*params, meter))]
    except sqlite3.OperationalError as exc:
        if "overflow" not in str(exc):
            raise
        return None


def _merged(states: list[BucketState]) -> list[BucketState]:
    """States of the same subject and window from several statements as one, so that the
    answer holds one state per subject and window however many statements it took."""
    acc: dict[tuple[str, int], BucketState] = {}
    for s in states:
        into = acc.get((s.subject, s.bucket))
        acc[(s.subject, s.bucket)] = s if into is None else _plus(into, s)
    return list(acc.values())


def _plus(a: BucketState, b: BucketState) -> BucketState:
    return BucketState(
        a.subject,
        "[]",
        a.bucket,
        a.count + b.count,
        _either(a.total, b.total, add),
        _either(a.low, b.low, min),
        _either(a.high, b.high, max),
        None,
    )


def _either(a: Decimal | None, b: Decimal | None, join: Callable[[Decimal, Decimal], Decimal]) -> Decimal | None:
    return b if a is None else a if b is None else join(a, b)


def _fold(
    conn: sqlite3.Connection,
    aggregation: Aggregation,
    meter: int,
    parts: Sequence[Part],
    subjects: tuple[str, ...],
) -> Iterable[tuple[object, ...]]:
    sql, params = fold_statement(conn, aggregation, meter, parts, subjects)
    return conn.execute(sql, params).fetchall()


def fold_statement(
    conn: sqlite3.Connection,
    aggregation: Aggregation,
    meter: int,
    parts: Sequence[Part],
    subjects: tuple[str, ...] = (),
) -> tuple[str, list[object]]:
    """The statement folding ``parts`` (at most :data:`MAX_PARTS`) per subject and window, and
    its parameters: rows of (subject, window tag, count, total_n, total_x, low_n, low_x,
    high_n, high_x), a column's integral values folded natively (``_n``) and the others
    exactly (``_x``, decimal text); a subtracted set may leave a subject a count of 0."""
    # Subject-first keys: each set is one index range per subject, read in subject order; a
    # sparse rollup or day set reads its rows by time instead (:func:`by_time`, :func:`days_by_time`).
    which = ",".join("?" * len(subjects)) if subjects else "SELECT subject FROM meter_subjects WHERE meter = ?"
    chosen: tuple[object, ...] = subjects or (meter,)
    columns = _columns(aggregation)
    population: int | None = None
    terms: list[str] = []
    params: list[object] = []
    for table, level, first, last, tag, sign in parts:
        count, folded = ("sum(cnt)", columns) if sign > 0 else ("-sum(cnt)", _columns(aggregation, sign))
        read = _by_time_read(table, level)
        if read is not None:
            index, level_read, cheaper = read
            if population is None:
                population = len(subjects) or _subjects(conn, meter)
            if cheaper(conn, meter, first, last, population):
                known = f"subject IN ({which})" if subjects else _KNOWN.format(table=table)
                terms.append(
                    f"SELECT subject, ? AS w, {count} AS c, {folded} FROM {table} INDEXED BY {index}"
                    f" WHERE meter = ? AND level = {level_read} AND bucket >= ? AND bucket < ? AND {known}"
                    " GROUP BY subject"
                )
                params += [tag, meter, first, last, *chosen]
                continue
        terms.append(
            f"SELECT subject, ? AS w, {count} AS c, {folded} FROM {table} WHERE meter = ? AND level = ?"
            f" AND subject IN ({which}) AND bucket >= ? AND bucket < ? GROUP BY subject"
        )
        params += [tag, meter, level, *chosen, first, last]
    if len(terms) == 1:  # one set: already one row per subject
        return terms[0], params
    return _OUTER.format(parts=" UNION ALL ".join(terms)), params


_KNOWN = "EXISTS (SELECT 1 FROM meter_subjects AS m WHERE m.meter = ? AND m.subject = {table}.subject)"
"""The subject filter of a read by time: each row's subject looked up (the rows are few; for day
rows it also leaves out the meter-wide rows, subject '')."""


def _by_time_read(table: str, level: int) -> tuple[str, int, Callable[..., bool]] | None:
    """How a set of ``table`` at ``level`` is read by time, when :func:`by_time` or
    :func:`days_by_time` finds it cheaper: the index, the level it reads (a rollup set's quarter
    hours: every level holds every bucket) and the test; None when it is always read per subject."""
    if table == "rollups":
        return "rollups_by_time", QUARTER, by_time
    if table == "summaries" and level == DAY:
        return "summaries_days_by_time", DAY, days_by_time
    return None


BY_TIME = 2
"""A rollup set is read by time when its range holds at most 1/BY_TIME events per subject read
(:func:`by_time`)."""


def by_time(conn: sqlite3.Connection, meter: int, first: int, last: int, population: int) -> bool:
    """Whether the rollups of ``[first, last)`` are cheaper read by time (``rollups_by_time``:
    every row in the range, a subject lookup each, a sort by subject) than per subject (an
    index seek per subject of ``population``, most finding nothing). The range's rows are at
    most its events, which the meter-wide quarter-hour summaries count (at most 96 rows a
    day). Measured on 10,000 subjects: per subject a set costs 20-28 ms at 1.5M events
    whatever it holds, by time about 4 us per event (the two meet at 0.55-0.6 events per
    subject); at 10M events a row by time costs about one seek. So a range is read by time
    when it holds at most ``population / BY_TIME`` events: a ragged edge of a few hours on a
    large tenant, not a day's worth of busy rows."""
    (events,) = conn.execute(
        f"SELECT coalesce(sum(cnt), 0) FROM summaries WHERE meter = ? AND level = {QUARTER} AND subject = ''"
        " AND bucket >= ? AND bucket < ?",
        (meter, first, last),
    ).fetchone()
    return bool(events * BY_TIME <= population)


DAYS_BY_TIME = 3
"""A day set is read by time when its range holds at most DAYS_BY_TIME day rows per subject
read (:func:`days_by_time`)."""


def days_by_time(conn: sqlite3.Connection, meter: int, first: int, last: int, population: int) -> bool:
    """Whether the per-subject day rows of ``[first, last)`` are cheaper read by time, through
    ``summaries_days_by_time`` (the day rows keyed by meter, day and subject, holding the values:
    only the rows present, in one index range, a subject lookup each and a sort by subject),
    than per subject (an index seek per subject of ``population``, each on its own page in a
    large store). The rows are counted in that index, up to the limit (about 1 ms for 30,000).
    Measured on 10,000 subjects and 10M events: a day row by time costs about 1.3 us, a seek
    per subject 4-8 us; a partial month's few days are read by time, a month of a busy meter's
    daily rows per subject."""
    if DAYS_BY_TIME <= 0:
        return False
    limit = population * DAYS_BY_TIME
    (rows,) = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM summaries INDEXED BY summaries_days_by_time"
        f" WHERE meter = ? AND level = {DAY} AND bucket >= ? AND bucket < ? LIMIT ?)",
        (meter, first, last, limit + 1),
    ).fetchone()
    return bool(rows <= limit)


def _subjects(conn: sqlite3.Connection, meter: int) -> int:
    (n,) = conn.execute("SELECT count(*) FROM meter_subjects WHERE meter = ?", (meter,)).fetchone()
    return int(n)


def _state(row: tuple[object, ...]) -> BucketState:
    subject, w, count, total_n, total_x, low_n, low_x, high_n, high_x = row
    total = _exact(total_n, total_x, add)
    low, high = _exact(low_n, low_x, min), _exact(high_n, high_x, max)
    return BucketState(subject, "[]", w, count, total, low, high, None)  # type: ignore[arg-type]


def _exact(native: object, exact: object, join: Callable[[Decimal, Decimal], Decimal]) -> Decimal | None:
    """The natively folded (integral) and the exactly folded values of a column as one."""
    if exact is None:
        return None if native is None else Decimal(native)  # type: ignore[arg-type]
    if native is None:
        return Decimal(exact)  # type: ignore[arg-type]
    return join(Decimal(native), Decimal(exact))  # type: ignore[arg-type]
