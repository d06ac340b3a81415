"""Summaries: coarse rollups that make long ranges cheap, kept with the rollups they summarize.

The rollups (``rollups.py``) hold one row per meter, subject, group value and minute, quarter
hour or hour. A dashboard over months reads many of them: a year of 1000 subjects with 3 group
values is millions of hour rows. The ``summaries`` table holds, in the rollups' own columns:

- **meter-wide** rows (``subject = ''``, never a real subject: events must name one) per UTC
  quarter hour, hour and day: every subject and group value of the meter together;
- **per-subject** rows per UTC day (``level`` 86400) and per UTC calendar month (``level``
  :data:`MONTH`, a code: the bucket is the month's first second), every group value together.

Both are folded from the same quarter-hour states the rollups get, in the same write (so in the
aggregator's transaction with its offset, in a backfill's chunk, in ``rebuild``): they are as
derived, as exact and as current as the rollups, and ``rebuild --check`` compares them too.

Reading (:func:`plan`): a range is cut at its window boundaries and covered by the coarsest
buckets that fit inside each window — whole UTC days, then hours, then quarter hours at the
edges; per subject (:func:`with_months`), the whole UTC months among those days are read from
the month rows. UTC offsets are whole quarter hours, so every period of any IANA zone (DST
included) is covered exactly; a range not on quarter hours is read from the rollups as before.
A year of 1000 subjects is then 12,000 month rows plus the days and hours of its edges,
instead of 365,000 day rows.
UNIQUE_COUNT meters have no summaries (distinct values do not add up).

``ledger_counts`` is kept beside them: ledger entries per namespace, event type and UTC
quarter hour of event time, counted as the aggregator passes its live offset (reconciliation's
"accepted"), so it reflects exactly the ledger up to that offset.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any

import msgspec

from meterline.domain.meters.fold import Fold, Key, merge_state
from meterline.domain.meters.model import Aggregation
from meterline.domain.meters.query import BucketState

QUARTER, HOUR, DAY = 900, 3600, 86400
LEVELS = (DAY, HOUR, QUARTER)
"""Bucket sizes of the meter-wide rows, coarsest first."""
UNSUMMARIZED = (Aggregation.UNIQUE_COUNT, Aggregation.APPROX_UNIQUE_COUNT)
"""Aggregations without summaries: distinct values (or their sketches) are not kept per
coarse bucket here (each has its own per-bucket table)."""
MONTH = 31 * DAY
"""The level of per-subject month rows: a UTC calendar month (a code, not its length; the
bucket is the month's first second, see :func:`month_of`)."""
WIDE = ""
"""The subject of meter-wide rows."""
NO_GROUP = ""
"""The group key of every summary row."""
SUMMARIES_KEY = "summaries_version"
"""In ``meta``: set once the summaries and ledger counts reflect the store."""
MONTHS_KEY = "summary_months"
"""In ``meta``: set once the per-subject month rows reflect the store (they came after the
other summaries: a store that has those gains the months from its day rows, once)."""


@functools.lru_cache(maxsize=8192)
def month_of(second: int) -> int:
    """The first second of the UTC calendar month holding ``second``."""
    at = datetime.fromtimestamp(second, UTC)
    return int(datetime(at.year, at.month, 1, tzinfo=UTC).timestamp())


def next_month(month: int) -> int:
    """The first second of the UTC month after the one starting at ``month``."""
    return month_of(month + 31 * DAY)


def floor(bucket: int, level: int) -> int:
    """The start of the ``level`` bucket holding ``bucket``."""
    return month_of(bucket) if level == MONTH else bucket - bucket % level


# -- writing ------------------------------------------------------------------------------------


def summary_states(levels: dict[Aggregation, dict[Key, list[Any]]]) -> dict[Aggregation, dict[Key, list[Any]]]:
    """The summary deltas of a fold's states (``Fold.levels()``): each quarter-hour state
    merged into its meter-wide quarter, hour and day and its subject's day and month."""
    out: dict[Aggregation, dict[Key, list[Any]]] = {}
    for aggregation, states in levels.items():
        acc = out.setdefault(summarized(aggregation), {})
        for (meter, level, subject, bucket, _), state in states.items():
            if level != QUARTER:
                continue
            if aggregation is Aggregation.TIME_WEIGHTED_SUM:
                state = [state[0], None, None, None, None]
            day = bucket - bucket % DAY
            for key in (
                (meter, QUARTER, WIDE, bucket, NO_GROUP),
                (meter, HOUR, WIDE, bucket - bucket % HOUR, NO_GROUP),
                (meter, DAY, WIDE, day, NO_GROUP),
                (meter, DAY, subject, day, NO_GROUP),
                (meter, MONTH, subject, month_of(day), NO_GROUP),
            ):
                into = acc.get(key)
                if into is None:
                    acc[key] = list(state)
                else:
                    merge_state(into, state)
    return out


def summarized(aggregation: Aggregation) -> Aggregation:
    """What the summaries keep of a meter: its own states, except for TIME_WEIGHTED_SUM,
    whose states join only per series (``domain.meters.gauges``): its summaries keep the
    count of readings (reconciliation's metered events) and its queries read the rollups."""
    return Aggregation.COUNT if aggregation is Aggregation.TIME_WEIGHTED_SUM else aggregation


def count_key(namespace: str, type_: str, time_us: int) -> tuple[str, str, int]:
    """The ``ledger_counts`` row an entry is counted in (its event time's UTC quarter hour)."""
    return namespace, type_, time_us // (QUARTER * 1_000_000) * QUARTER


def write_counts(conn: sqlite3.Connection, counts: dict[tuple[str, str, int], int], prefix: str = "") -> None:
    conn.executemany(
        f"INSERT INTO {prefix}ledger_counts VALUES (?,?,?,?)"
        " ON CONFLICT (namespace, type, bucket) DO UPDATE SET cnt = cnt + excluded.cnt",
        [(*key, n) for key, n in counts.items()],
    )
    counts.clear()


# -- reading ------------------------------------------------------------------------------------


def plan(bounds: Sequence[int]) -> list[tuple[int, int, int]] | None:
    """``(level, first, last)`` bucket ranges (``first <= bucket < last``) that cover
    ``[bounds[0], bounds[-1])`` without crossing a boundary, coarsest buckets first; None when
    a boundary is not on a quarter hour."""
    if any(b % QUARTER for b in bounds):
        return None
    out: list[tuple[int, int, int]] = []
    for a, b in pairwise(bounds):
        t = a
        while t < b:
            level = next(size for size in LEVELS if t % size == 0 and t + size <= b)
            last = b - b % level
            for coarser in LEVELS[: LEVELS.index(level)]:
                up = t - t % coarser + coarser  # where a coarser bucket could start
                if up + coarser <= b:
                    last = min(last, up)
            out.append((level, t, last))
            t = last
    return out


def has_day(segments: Sequence[tuple[int, int, int]]) -> bool:
    return any(level == DAY for level, _, _ in segments)


def with_months(segments: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``segments`` (:func:`plan`) with the whole UTC months inside their day ranges as
    :data:`MONTH` ranges (for the per-subject rows)."""
    out: list[tuple[int, int, int]] = []
    for level, first, last in segments:
        if level != DAY:
            out.append((level, first, last))
            continue
        t = first
        while t < last:
            end = t
            while month_of(end) == end and next_month(end) <= last:
                end = next_month(end)
            if end > t:
                out.append((MONTH, t, end))
            else:
                end = min(next_month(month_of(t)), last)
                out.append((DAY, t, end))
            t = end
    return out


_FOLDED = {
    Aggregation.COUNT: "sum(cnt), NULL, NULL, NULL",
    Aggregation.SUM: "sum(cnt), dec_sum(total), NULL, NULL",
    Aggregation.AVG: "sum(cnt), dec_sum(total), NULL, NULL",
    Aggregation.MIN: "sum(cnt), NULL, dec_least(low), NULL",
    Aggregation.MAX: "sum(cnt), NULL, NULL, dec_greatest(high)",
}


def wide_states(
    conn: sqlite3.Connection, aggregation: Aggregation, meter: int, segments: Sequence[tuple[int, int, int]]
) -> Iterator[BucketState]:
    """The meter-wide summary rows of the segments (one state per bucket; the caller merges
    them into windows)."""
    sql = (
        "SELECT bucket, cnt, total, low, high, last_t, last_seq, last_v FROM summaries"
        " WHERE meter = ? AND level = ? AND subject = '' AND bucket >= ? AND bucket < ?"
    )
    for level, first, last in _merged(segments):
        for bucket, cnt, total, low, high, last_t, last_seq, last_v in conn.execute(sql, (meter, level, first, last)):
            latest = None if last_t is None else (last_t, last_seq, Decimal(last_v))
            yield BucketState("", "[]", bucket, cnt, _dec(total), _dec(low), _dec(high), latest)


def subject_states(
    conn: sqlite3.Connection,
    aggregation: Aggregation,
    meter: int,
    level: int,
    first: int,
    last: int,
    subjects: tuple[str, ...] = (),
) -> Iterator[BucketState]:
    """Per subject (every one, or only ``subjects``), its day or month (``level``) rows in
    ``[first, last)`` folded into one state (bucket ``first``; LATEST: one state per row)."""
    chosen: tuple[object, ...] = subjects or (meter,)
    which = ",".join("?" * len(subjects)) if subjects else "SELECT subject FROM meter_subjects WHERE meter = ?"
    where = f" FROM summaries WHERE meter = ? AND level = ? AND subject IN ({which}) AND bucket >= ? AND bucket < ?"
    params = (meter, level, *chosen, first, last)
    if aggregation is Aggregation.LATEST:
        sql = "SELECT subject, cnt, last_t, last_seq, last_v" + where
        for subject, cnt, last_t, last_seq, last_v in conn.execute(sql, params):
            yield BucketState(subject, "[]", first, cnt, None, None, None, (last_t, last_seq, Decimal(last_v)))
        return
    sql = f"SELECT subject, {_FOLDED[aggregation]}{where} GROUP BY subject"
    for subject, cnt, total, low, high in conn.execute(sql, params):
        yield BucketState(subject, "[]", first, cnt, _dec(total), _dec(low), _dec(high), None)


def _merged(segments: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Adjacent ranges of one level as one (rows are merged into windows by bucket anyway)."""
    out: list[tuple[int, int, int]] = []
    for level, first, last in sorted(segments):
        if out and out[-1][0] == level and out[-1][2] == first:
            out[-1] = (level, out[-1][1], last)
        else:
            out.append((level, first, last))
    return out


def _dec(value: int | str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


# -- replaced rollups ---------------------------------------------------------------------------


def refresh(
    conn: sqlite3.Connection, prefix: str, meter: int, aggregation: Aggregation, subject: str, hour: int
) -> None:
    """Recompute, from the rollups, every summary row that holds ``subject``'s ``hour`` of
    ``meter``: for a writer that *replaced* that hour's rollups (recomputed it from the ledger)
    instead of adding deltas, and wrote them without summaries. Exact for every aggregation
    (a MIN, MAX or LATEST cannot take a value back out, so the rows are folded again)."""
    if aggregation in UNSUMMARIZED:
        return
    aggregation = summarized(aggregation)
    hour -= hour % HOUR
    day = hour - hour % DAY
    rollups, summaries = f"{prefix}rollups", f"{prefix}summaries"
    subjects = f"SELECT subject FROM {prefix}meter_subjects WHERE meter = ?"
    columns = "bucket, cnt, total, low, high, last_t, last_seq, last_v"
    for level in (QUARTER, HOUR):  # every subject's rollups of the hour, meter-wide
        rows = conn.execute(
            f"SELECT {columns} FROM {rollups} WHERE meter = ? AND level = ? AND subject IN ({subjects})"
            " AND bucket >= ? AND bucket < ?",
            (meter, level, meter, hour, hour + HOUR),
        ).fetchall()
        _replace(conn, summaries, aggregation, (meter, level, WIDE), hour, hour + HOUR, rows)
    one_day = " WHERE meter = ? AND level = ? AND subject = ? AND bucket >= ? AND bucket < ?"
    rows = conn.execute(f"SELECT {columns} FROM {rollups}{one_day}", (meter, HOUR, subject, day, day + DAY)).fetchall()
    _replace(conn, summaries, aggregation, (meter, DAY, subject), day, day + DAY, rows)
    rows = conn.execute(f"SELECT {columns} FROM {summaries}{one_day}", (meter, HOUR, WIDE, day, day + DAY)).fetchall()
    _replace(conn, summaries, aggregation, (meter, DAY, WIDE), day, day + DAY, rows)
    month, end = month_of(day), next_month(month_of(day))
    rows = conn.execute(f"SELECT {columns} FROM {summaries}{one_day}", (meter, DAY, subject, month, end)).fetchall()
    _replace(conn, summaries, aggregation, (meter, MONTH, subject), month, end, rows)


def refresh_subject(
    conn: sqlite3.Connection, meter: int, aggregation: Aggregation, subject: str, days: set[int]
) -> None:
    """Fold ``subject``'s day rows of ``days`` (their first seconds) and the month rows that
    hold them again from its hour rollups: for a writer that moved whole hours of rollups from
    one subject to another (an erasure), which leaves every meter-wide row as it was."""
    if aggregation in UNSUMMARIZED:
        return
    aggregation = summarized(aggregation)  # a gauge's summaries are counts of readings
    columns = "bucket, cnt, total, low, high, last_t, last_seq, last_v"
    one = " WHERE meter = ? AND level = ? AND subject = ? AND bucket >= ? AND bucket < ?"
    for day in sorted(days):
        rows = conn.execute(f"SELECT {columns} FROM rollups{one}", (meter, HOUR, subject, day, day + DAY)).fetchall()
        _replace(conn, "summaries", aggregation, (meter, DAY, subject), day, day + DAY, rows)
    for month in sorted({month_of(day) for day in days}):
        end = next_month(month)
        rows = conn.execute(f"SELECT {columns} FROM summaries{one}", (meter, DAY, subject, month, end)).fetchall()
        _replace(conn, "summaries", aggregation, (meter, MONTH, subject), month, end, rows)


def _replace(
    conn: sqlite3.Connection,
    table: str,
    aggregation: Aggregation,
    target: tuple[int, int, str],
    first: int,
    last: int,
    rows: list[tuple[Any, ...]],
) -> None:
    """Replace ``table``'s rows of ``target`` (meter, level, subject) in ``[first, last)`` by
    ``rows`` (bucket and stored state) folded into the target level's buckets."""
    from meterline.adapters.sqlite.rollups import row_of, upsert  # rollups writes summaries too

    meter, level, subject = target
    folded: dict[Key, list[Any]] = {}
    for bucket, *stored in rows:
        _fold_into(folded, (meter, level, subject, floor(bucket, level), NO_GROUP), _state(*stored))
    conn.execute(
        f"DELETE FROM {table} WHERE meter = ? AND level = ? AND subject = ? AND bucket >= ? AND bucket < ?",
        (meter, level, subject, first, last),
    )
    conn.executemany(upsert(table, aggregation), [row_of(aggregation, k, s) for k, s in folded.items()])


def _fold_into(folded: dict[Key, list[Any]], key: Key, state: list[Any]) -> None:
    into = folded.get(key)
    if into is None:
        folded[key] = state
    else:
        merge_state(into, state)


# -- a store from before the summaries ------------------------------------------------------------


def fill(conn: sqlite3.Connection, write: Any) -> None:
    """Derive the summaries from the stored quarter-hour rollups and the ledger counts from
    the ledger up to the aggregator's offset, once (a store written before they existed), or
    only the per-subject month rows from the day rows (a store written before the months);
    in one transaction, so they match the rollups and the offset exactly. ``write`` writes a
    fold (``rollups.write_fold``)."""
    if _done(conn, SUMMARIES_KEY) and _done(conn, MONTHS_KEY):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not _done(conn, SUMMARIES_KEY):
            _fill(conn, write)  # the month rows too
            conn.execute("INSERT INTO meta VALUES (?, '1')", (SUMMARIES_KEY,))
        elif not _done(conn, MONTHS_KEY):
            _fill_months(conn)
        conn.execute("INSERT OR IGNORE INTO meta VALUES (?, '1')", (MONTHS_KEY,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _done(conn: sqlite3.Connection, key: str) -> bool:
    return conn.execute("SELECT 1 FROM meta WHERE key = ?", (key,)).fetchone() is not None


def _fill_months(conn: sqlite3.Connection) -> None:
    """Each subject's month rows folded from its day rows, for every meter that has summaries."""
    from meterline.adapters.sqlite.rollups import row_of, upsert  # rollups writes summaries too

    conn.execute("DELETE FROM summaries WHERE level = ?", (MONTH,))
    for key, spec in conn.execute("SELECT key, spec FROM meters WHERE deleted_us IS NULL").fetchall():
        aggregation = Aggregation(msgspec.json.decode(spec)["aggregation"])
        if aggregation in UNSUMMARIZED:
            continue
        aggregation = summarized(aggregation)  # a gauge's day rows are counts: so are its months
        folded: dict[Key, list[Any]] = {}
        rows = conn.execute(
            "SELECT subject, bucket, cnt, total, low, high, last_t, last_seq, last_v FROM summaries"
            " WHERE meter = ? AND level = ? AND subject <> ?",
            (key, DAY, WIDE),
        )
        for subject, bucket, *stored in rows:
            _fold_into(folded, (key, MONTH, subject, month_of(bucket), NO_GROUP), _state(*stored))
        conn.executemany(upsert("summaries", aggregation), [row_of(aggregation, k, s) for k, s in folded.items()])


def _fill(conn: sqlite3.Connection, write: Any) -> None:
    conn.execute("DELETE FROM summaries")
    conn.execute("DELETE FROM ledger_counts")
    offset = conn.execute("SELECT value FROM meta WHERE key = 'aggregated_seq'").fetchone()
    q = QUARTER * 1_000_000
    # floor division (time_us may be negative: SQLite's / truncates towards zero)
    conn.execute(
        f"INSERT INTO ledger_counts SELECT namespace, type, (time_us - (((time_us % {q}) + {q}) % {q})) / 1000000,"
        " count(*) FROM events WHERE seq <= ? AND seq NOT IN (SELECT seq FROM corrections) GROUP BY 1, 2, 3",
        (int(offset[0]) if offset else 0,),
    )
    meters = conn.execute("SELECT key, spec FROM meters WHERE deleted_us IS NULL").fetchall()
    for key, spec in meters:
        aggregation = summarized(Aggregation(msgspec.json.decode(spec)["aggregation"]))
        if aggregation in UNSUMMARIZED:
            continue
        fold = Fold()
        states = fold.minutes.setdefault(aggregation, {})
        rows = conn.execute(
            "SELECT subject, bucket, group_key, cnt, total, low, high, last_t, last_seq, last_v FROM rollups"
            " WHERE meter = ? AND level = ?",
            (key, QUARTER),
        )
        for subject, bucket, group, cnt, total, low, high, last_t, last_seq, last_v in rows:
            states[(key, QUARTER, subject, bucket, group)] = _state(cnt, total, low, high, last_t, last_seq, last_v)
        write(conn, _Levels(fold), "", summaries_only=True)


def _state(cnt: int, *stored: Any) -> list[Any]:
    """A stored rollup row as a fold state. Fields the aggregation does not keep get a
    stand-in (never written: a row keeps only its aggregation's fields)."""
    total, low, high, last_t, last_seq, last_v = stored
    value = next((Decimal(v) for v in (total, low, high, last_v) if v is not None), None)
    if value is None:
        return [cnt, None, None, None, (last_t, last_seq, None)]
    return [
        cnt,
        Decimal(total) if total is not None else value,
        Decimal(low) if low is not None else value,
        Decimal(high) if high is not None else value,
        (last_t, last_seq, Decimal(last_v)) if last_v is not None else (-(2**62), 0, value),
    ]


class _Levels(Fold):
    """A fold whose quarter-hour states are given (``levels()`` returns them as they are)."""

    def __init__(self, fold: Fold) -> None:
        super().__init__()
        self.minutes = fold.minutes

    def levels(self, skip: frozenset[Aggregation] = frozenset()) -> dict[Aggregation, dict[Key, list[Any]]]:
        return {a: states for a, states in self.minutes.items() if a not in skip}
