"""Rollup tables: apply aggregated deltas (writer side) and read bucket states (query side).

The aggregator folds a chunk of ledger events into one delta per (meter, level, subject,
bucket, group) in memory (``domain.meters.fold``); this upserts each delta once: the states
SQLite's integers merge exactly are merged into every bucket size in SQL (``folding.py``), the
others in Python. Sums, minima and maxima are merged into stored rows by SQL functions that
call the exact Decimal code in ``meterline.domain.decimals``.
"""

from __future__ import annotations

import bisect
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from meterline.adapters.sqlite.folding import staged_rows, write_staged
from meterline.adapters.sqlite.gauges import Late, write_gauges
from meterline.adapters.sqlite.sketches import move_sketches, write_sketches
from meterline.adapters.sqlite.summaries import summarized, summary_states
from meterline.domain.decimals import add, stored
from meterline.domain.meters.fold import Fold, Key
from meterline.domain.meters.model import Aggregation
from meterline.domain.meters.query import BucketState, too_many_rows
from meterline.domain.meters.windows import BUCKETS

ZERO = Decimal(0)

# Whole sums below 2**62 are stored as integers (decimals.stored) and added by SQLite itself;
# anything else goes through the exact Decimal function.
_ADD_TOTAL = (
    "cnt = cnt + excluded.cnt, total = CASE WHEN typeof(total) = 'integer' AND typeof(excluded.total) = 'integer'"
    " AND abs(total + excluded.total) < 4611686018427387904 THEN total + excluded.total"
    " ELSE dec_add(total, excluded.total) END"
)
_COLUMNS = {
    Aggregation.COUNT: "cnt = cnt + excluded.cnt",
    Aggregation.SUM: _ADD_TOTAL,
    Aggregation.AVG: _ADD_TOTAL,
    Aggregation.MIN: "cnt = cnt + excluded.cnt, low = dec_min(low, excluded.low)",
    Aggregation.MAX: "cnt = cnt + excluded.cnt, high = dec_max(high, excluded.high)",
    Aggregation.LATEST: (
        "cnt = cnt + excluded.cnt,"
        " last_v = CASE WHEN (excluded.last_t, excluded.last_seq) > (last_t, last_seq)"
        " THEN excluded.last_v ELSE last_v END,"
        " last_seq = CASE WHEN (excluded.last_t, excluded.last_seq) > (last_t, last_seq)"
        " THEN excluded.last_seq ELSE last_seq END,"
        " last_t = max(last_t, excluded.last_t)"
    ),
}


_ROW = "meter, level, subject, bucket, group_key, cnt, total, low, high, last_t, last_seq, last_v"


# The state columns each aggregation writes (the others stay NULL). Only these are bound: the
# sqlite3 module binds a None (and a bytes) parameter through its adapter lookup, several
# times the cost of an int or str, and a rollup row is written per event and bucket size.
_STATE = {
    Aggregation.COUNT: "cnt",
    Aggregation.SUM: "cnt, total",
    Aggregation.AVG: "cnt, total",
    Aggregation.MIN: "cnt, low",
    Aggregation.MAX: "cnt, high",
    Aggregation.LATEST: "cnt, last_t, last_seq, last_v",
}


def upsert(table: str, aggregation: Aggregation) -> str:
    """The upsert of :func:`row_of`'s rows of ``aggregation`` into ``table``."""
    columns = f"meter, level, subject, bucket, group_key, {_STATE[aggregation]}"
    marks = ",".join("?" * (columns.count(",") + 1))
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) "
        f"ON CONFLICT (meter, level, subject, bucket, group_key) DO UPDATE SET {_COLUMNS[aggregation]}"
    )


def _moved(table: str, aggregation: Aggregation, where: str) -> str:
    """Copy rows of ``table`` matching ``where`` to another subject (the first parameter), merged
    with its rows as the aggregator merges deltas. Gauge buckets cannot merge without their
    readings: they are copied whole, and a pseudonym's bucket that already exists is kept."""
    columns = _ROW
    if table == "summaries":
        aggregation = summarized(aggregation)  # a gauge's summaries are counts
    elif aggregation is Aggregation.TIME_WEIGHTED_SUM:
        columns += ", first_t, first_seq"
    picked = columns.replace("subject", "?", 1)
    on_conflict = (
        "DO NOTHING" if aggregation is Aggregation.TIME_WEIGHTED_SUM else f"DO UPDATE SET {_COLUMNS[aggregation]}"
    )
    return (
        f"INSERT INTO {table} ({columns}) SELECT {picked} FROM {table} {where}"
        f" ON CONFLICT (meter, level, subject, bucket, group_key) {on_conflict}"
    )


def move_subject_range(
    conn: sqlite3.Connection, meter: int, aggregation: Aggregation, old: str, new: str, start: int, end: int
) -> int:
    """:func:`move_subject` for the rollup and distinct-value buckets in ``[start, end)`` (epoch
    seconds, whole hours: every bucket size lies inside an hour); the caller folds the
    summaries of those hours again (``summaries.refresh``)."""
    moved = 0
    # every bucket size named, so each statement seeks the (meter, level, subject, bucket) key
    levels = ",".join(str(level) for level in BUCKETS)
    where = f"WHERE meter = ? AND level IN ({levels}) AND subject = ? AND bucket >= ? AND bucket < ?"
    if aggregation in _COLUMNS or aggregation is Aggregation.TIME_WEIGHTED_SUM:
        conn.execute(_moved("rollups", aggregation, where), (new, meter, old, start, end))
        moved += conn.execute(f"DELETE FROM rollups {where}", (meter, old, start, end)).rowcount
    conn.execute(
        f"INSERT OR IGNORE INTO uniques SELECT meter, level, ?, bucket, group_key, value FROM uniques {where}",
        (new, meter, old, start, end),
    )
    moved += conn.execute(f"DELETE FROM uniques {where}", (meter, old, start, end)).rowcount
    moved += move_sketches(conn, where, (meter, old, start, end), new)
    if moved:
        conn.execute("INSERT OR IGNORE INTO meter_subjects VALUES (?, ?)", (meter, new))
    return moved


def move_subject(conn: sqlite3.Connection, meter: int, aggregation: Aggregation, old: str, new: str) -> int:
    """Give ``old``'s rollup, summary and distinct-value rows of ``meter`` to ``new``, merged
    with any ``new`` already has as the aggregator merges deltas (an erasure's pseudonym);
    returns how many rows moved."""
    moved = 0
    keeps = aggregation in _COLUMNS or aggregation is Aggregation.TIME_WEIGHTED_SUM
    for table in ("rollups", "summaries") if keeps else ():  # UNIQUE_COUNT: uniques only
        conn.execute(_moved(table, aggregation, "WHERE meter = ? AND subject = ?"), (new, meter, old))
        moved += conn.execute(f"DELETE FROM {table} WHERE meter = ? AND subject = ?", (meter, old)).rowcount
    conn.execute(
        "INSERT OR IGNORE INTO uniques SELECT meter, level, ?, bucket, group_key, value FROM uniques"
        " WHERE meter = ? AND subject = ?",
        (new, meter, old),
    )
    moved += conn.execute("DELETE FROM uniques WHERE meter = ? AND subject = ?", (meter, old)).rowcount
    moved += move_sketches(conn, "WHERE meter = ? AND subject = ?", (meter, old), new)
    conn.execute(
        "INSERT OR IGNORE INTO meter_subjects SELECT meter, ? FROM meter_subjects WHERE meter = ? AND subject = ?",
        (new, meter, old),
    )
    conn.execute("DELETE FROM meter_subjects WHERE meter = ? AND subject = ?", (meter, old))
    return moved


class Deltas(Fold):
    """A :class:`~meterline.domain.meters.fold.Fold` that can upsert itself (:func:`write_fold`)."""

    def flush(self, conn: sqlite3.Connection, prefix: str = "") -> None:
        write_fold(conn, self, prefix)


def write_fold(
    conn: sqlite3.Connection, fold: Fold, prefix: str = "", *, summaries: bool = True, summaries_only: bool = False
) -> set[Late]:
    """Upsert the folded deltas into ``{prefix}rollups`` / ``{prefix}uniques`` and (unless
    ``summaries`` is false) their summaries into ``{prefix}summaries`` (``summaries.py``), then
    clear them. A writer that replaces rollup buckets instead of adding to them writes without
    summaries and calls ``summaries.refresh`` for each replaced hour. Returns the hours of
    gauge buckets that a late reading interleaves with (``gauges.write_gauges``): the writer
    recomputes them from the ledger."""
    in_sql = {} if summaries_only else _in_sql(fold)
    for aggregation, staged in in_sql.items():
        write_staged(conn, aggregation, staged, prefix, summaries=summaries, on_conflict=_COLUMNS[aggregation])
    levels = fold.levels(skip=frozenset(in_sql))
    wanted = summary_states(levels) if summaries else {}
    late: set[Late] = set()
    for table, deltas in (("rollups", {} if summaries_only else levels), ("summaries", wanted)):
        for aggregation, states in deltas.items():
            if aggregation is Aggregation.TIME_WEIGHTED_SUM:
                late |= write_gauges(conn, f"{prefix}{table}", states)
                continue
            rows = (row_of(aggregation, k, s) for k, s in states.items())
            conn.executemany(upsert(f"{prefix}{table}", aggregation), rows)
    if fold.uniques and not summaries_only:
        conn.executemany(f"INSERT OR IGNORE INTO {prefix}uniques VALUES (?,?,?,?,?,?)", fold.uniques)
    if fold.sketched and not summaries_only:
        write_sketches(conn, f"{prefix}sketches", fold.sketched)
    fold.clear()
    return late


def _in_sql(fold: Fold) -> dict[Aggregation, list[tuple[Any, ...]]]:
    """The aggregations of ``fold`` that SQLite can merge exactly, with their staged rows
    (``folding.py``)."""
    out = {}
    for aggregation, states in fold.minutes.items():
        rows = staged_rows(aggregation, states)
        if rows is not None:
            out[aggregation] = rows
    return out


def row_of(aggregation: Aggregation, key: Key, s: list[Any]) -> tuple[Any, ...]:
    """The parameters of :func:`upsert` for one bucket state: its key, then the columns
    ``aggregation`` keeps."""
    if aggregation is Aggregation.SUM or aggregation is Aggregation.AVG:
        return (*key, s[0], stored(s[1]))
    if aggregation is Aggregation.COUNT:
        return (*key, s[0])
    if aggregation is Aggregation.MIN:
        return (*key, s[0], stored(s[2]))
    if aggregation is Aggregation.MAX:
        return (*key, s[0], stored(s[3]))
    return (*key, s[0], s[4][0], s[4][1], stored(s[4][2]))  # LATEST


# Per aggregation, what to read: SQL folds the buckets of each window (sum of counts, exact
# Decimal sums/minima/maxima through the functions in schema.py) so Python sees one row per
# window, subject and group instead of one per bucket. LATEST needs the whole state per bucket.
# Integer totals are summed natively and only the others in Python; if the native sum
# overflows, the query is run again with every total through dec_sum.
_TOTALS = (
    "sum(total) FILTER (WHERE typeof(total) = 'integer'), dec_sum(total) FILTER (WHERE typeof(total) <> 'integer')"
)
_FOLDED = {
    Aggregation.COUNT: "sum(cnt), NULL, NULL, NULL, NULL",
    Aggregation.SUM: f"sum(cnt), {_TOTALS}, NULL, NULL",
    Aggregation.AVG: f"sum(cnt), {_TOTALS}, NULL, NULL",
    Aggregation.MIN: "sum(cnt), NULL, NULL, dec_least(low), NULL",
    Aggregation.MAX: "sum(cnt), NULL, NULL, NULL, dec_greatest(high)",
}
_TOTALS_SLOW = "NULL, dec_sum(total)"


def read_states(
    conn: sqlite3.Connection,
    aggregation: Aggregation,
    bounds: Sequence[int],
    level: int,
    meter: int,
    subjects: tuple[str, ...],
    *,
    by_subject: bool = True,
    by_group: bool = True,
    max_rows: int | None = None,
) -> Iterator[BucketState]:
    """Bucket states between the first and last bound; for all but LATEST already folded per
    window (``bucket`` is then the window's start), and per subject / group only when asked:
    a GROUP BY that follows the index order (subject) costs no sort. Folded rows are read
    whole, so more than ``max_rows`` of them raise ``too_many_rows`` instead (LATEST states
    are streamed; :func:`merge` bounds what it keeps of them)."""
    start, end = bounds[0], bounds[-1]
    if aggregation is Aggregation.LATEST:
        sql, params = _range_sql(
            "SELECT subject, group_key, bucket, cnt, last_t, last_seq, last_v FROM rollups",
            meter,
            level,
            start,
            end,
            subjects,
        )
        for subject, group_key, bucket, cnt, last_t, last_seq, last_v in conn.execute(sql, params):
            yield BucketState(subject, group_key, bucket, cnt, None, None, None, (last_t, last_seq, Decimal(last_v)))
        return
    window = _window_sql(conn, bounds)
    folded = _FOLDED[aggregation]
    shape = (bounds, level, meter, subjects, by_subject, by_group, max_rows)
    try:
        rows = _folded_rows(conn, window, folded, *shape)
    except sqlite3.OperationalError as exc:
        if "overflow" not in str(exc):
            raise
        rows = _folded_rows(conn, window, folded.replace(_TOTALS, _TOTALS_SLOW), *shape)
    for subject, group_key, w, cnt, int_total, dec_total, low, high in rows:
        if cnt is None:  # no GROUP BY and no rows: SQL still answers one row of NULLs
            continue
        total = (
            None if int_total is None and dec_total is None else add(Decimal(int_total or 0), _dec(dec_total) or ZERO)
        )
        yield BucketState(subject, group_key, w, cnt, total, _dec(low), _dec(high), None)


def _folded_rows(
    conn: sqlite3.Connection,
    window: str,
    folded: str,
    bounds: Sequence[int],
    level: int,
    meter: int,
    subjects: tuple[str, ...],
    by_subject: bool,
    by_group: bool,
    max_rows: int | None,
) -> list[tuple[Any, ...]]:
    start, end = bounds[0], bounds[-1]
    subject = "subject" if by_subject else "''"
    group = "group_key" if by_group else "'[]'"
    select = f"SELECT {subject}, {group}, {window} AS w, {folded} FROM rollups"
    sql, params = _range_sql(select, meter, level, start, end, subjects)
    if window == "?":
        params.insert(0, start)
    keys = [k for k, on in (("subject", by_subject), ("w", window != "?"), ("group_key", by_group)) if on]
    if keys:
        sql += " GROUP BY " + ", ".join(keys)
    if max_rows is None:
        return conn.execute(sql, params).fetchall()
    rows = conn.execute(sql + " LIMIT ?", [*params, max_rows + 1]).fetchall()
    if len(rows) > max_rows:
        raise too_many_rows(max_rows)
    return rows


def _window_sql(conn: sqlite3.Connection, bounds: Sequence[int]) -> str:
    """SQL for the start of the window holding ``bucket``: a bound parameter for one window, a
    CASE over the (integer) boundaries for up to 64 windows, else a Python function."""
    if len(bounds) == 2:
        return "?"
    if len(bounds) <= 65:
        whens = " ".join(f"WHEN bucket < {int(b)} THEN {int(a)}" for a, b in itertools.pairwise(bounds))
        return f"CASE {whens} END"
    conn.create_function("window_of", 1, lambda b: bounds[bisect.bisect_right(bounds, b) - 1], deterministic=True)
    return "window_of(bucket)"


def read_uniques(
    conn: sqlite3.Connection, meter: int, level: int, start: int, end: int, subjects: tuple[str, ...]
) -> Iterator[tuple[str, str, int, str]]:
    sql, params = _range_sql(
        "SELECT subject, group_key, bucket, value FROM uniques", meter, level, start, end, subjects
    )
    yield from conn.execute(sql, params)


def read_sketches(
    conn: sqlite3.Connection, meter: int, level: int, start: int, end: int, subjects: tuple[str, ...]
) -> Iterator[tuple[str, str, int, bytes]]:
    sql, params = _range_sql(
        "SELECT subject, group_key, bucket, sketch FROM sketches", meter, level, start, end, subjects
    )
    yield from conn.execute(sql, params)


def _range_sql(
    select: str, meter: int, level: int, start: int, end: int, subjects: tuple[str, ...]
) -> tuple[str, list[Any]]:
    # Subject-first keys: one customer's range is a contiguous index scan however long the
    # history. Without a subject filter, the meter's subject list drives the same scan per subject.
    if subjects:
        marks = ",".join("?" * len(subjects))
        where = f"subject IN ({marks})"
        params: list[Any] = [meter, level, *subjects, start, end]
    else:
        where = "subject IN (SELECT subject FROM meter_subjects WHERE meter = ?)"
        params = [meter, level, meter, start, end]
    return f"{select} WHERE meter = ? AND level = ? AND {where} AND bucket >= ? AND bucket < ?", params


def _dec(text: int | str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def first_bucket(conn: sqlite3.Connection, meter: int) -> int | None:
    row = conn.execute(
        "SELECT min(bucket) FROM (SELECT min(bucket) AS bucket FROM rollups WHERE meter = ? AND level = 3600"
        " UNION ALL SELECT min(bucket) FROM uniques WHERE meter = ? AND level = 3600"
        " UNION ALL SELECT min(bucket) FROM sketches WHERE meter = ? AND level = 3600)",
        (meter, meter, meter),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])
