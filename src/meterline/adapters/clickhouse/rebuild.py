"""``meterline rebuild`` in scale mode: the usage tables recomputed from ClickHouse's raw
``events`` table, compared with the stored ones and, unless only checking, swapped in.

It runs while the sink workers are held off (``adapters.postgres.fence``, maintenance) and no
range is recorded unfinished, so the stored tables stand still and ``usage_progress`` says
exactly which raw events they reflect:

1. per stream (a Kafka partition, or an aggregator's live offset) the raw events up to its
   ``done`` are read in ``seq`` order, a chunk at a time, and folded through the live meters
   (the workers' fold, one pass over every stream) — for each meter less what its rollups do
   not hold yet: the part of its backfill on that stream still to do, or the whole stream when
   the meter was never applied to it;
2. the fold goes into fresh tables ``rebuild_<run>_usage_rollups`` / ``_uniques`` /
   ``_sketches`` / ``_dims`` under tokens of their own;
3. they are compared with the stored tables, for the live meters: the merged states (count,
   sum, min, max, latest) per meter, level, subject, bucket and group; the UNIQUE_COUNT values;
   the APPROX_UNIQUE_COUNT sketches, register by register (merged, a sketch is a function of
   the bucket's values only); the TIME_WEIGHTED_SUM states joined per bucket (count, first and
   last reading only where batches interleave); the group values and subjects seen. Every difference is described;
4. unless only checking, when something differs: the rows of meters no longer live are copied
   into the fresh tables, and each fresh table is exchanged with the stored one
   (``EXCHANGE TABLES``, atomic: a query reads the old table or the rebuilt one, never a half
   of each); the old tables are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.gauges import compared
from meterline.adapters.clickhouse.progress import Progress, ProgressTable
from meterline.adapters.clickhouse.schema import statements
from meterline.adapters.clickhouse.sink import backfill_stream, raw_entries, split_backfill
from meterline.adapters.clickhouse.usage import LIVE, write_usage
from meterline.domain.clock import rfc3339
from meterline.domain.integrity.rebuild import RebuildReport
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import LedgerEntry, Replay
from meterline.domain.meters.model import Meter

TABLES = ("usage_rollups", "usage_uniques", "usage_sketches", "usage_gauges", "usage_dims")
CHUNK = 20_000
_ALL = (0, 1 << 63)
"""A meter never applied to a stream reflects none of it."""


def unfinished(conn: Connection) -> list[str]:
    """The ranges recorded and not finished (a worker writing now, died, or stopped mid-batch)."""
    return [f"{p.stream} ({p.done}, {p.pending_end}]" for p in ProgressTable(conn).read().values() if p.pending]


def settled(conn: Connection, seconds: float) -> list[str]:
    """Wait up to ``seconds`` until no range is unfinished; those still unfinished then."""
    deadline = time.monotonic() + seconds
    while (left := unfinished(conn)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def rebuild(
    conn: Connection, meters: Sequence[Meter], *, cap: int, replace: bool, window: int, run: str
) -> RebuildReport:
    """Steps 1-4 of the module doc; the caller holds the workers off and saw nothing unfinished."""
    into = f"rebuild_{run}_"
    for sql in statements(window, None):
        for name in TABLES:
            if sql.lstrip().startswith(f"CREATE TABLE IF NOT EXISTS {name} "):
                conn.command(sql.replace(f"EXISTS {name} ", f"EXISTS {into}{name} ", 1))
    try:
        events = _fold(conn, meters, cap, ProgressTable(conn).read(), into, run)
        differences, details = _compare(conn, meters, into)
        replaced = replace and any(differences.values())
        if replaced:
            _swap(conn, meters, into)
        return RebuildReport(events, differences, replaced, tuple(details))
    finally:
        for name in TABLES:
            conn.command(f"DROP TABLE IF EXISTS {into}{name}")


def _fold(
    conn: Connection, meters: Sequence[Meter], cap: int, progress: dict[str, Progress], into: str, run: str
) -> int:
    compiled = [CompiledMeter(m) for m in meters]
    keys = {m.key for m in meters}
    replay = Replay(cap, admit_amends=True)  # as the sink workers fold (adapters.clickhouse.corrections)
    events = 0
    for stream, p in sorted(progress.items()):
        if p.stream.startswith("backfill:"):
            continue
        gaps = {m.key: _gap(progress, m.key, stream) for m in meters}
        after = 0
        while after < p.done:
            chunk = raw_entries(conn, stream, after, p.done, CHUNK)
            if not chunk:
                break
            for applied, entries in _runs(chunk, compiled, gaps):
                replay.apply(applied, entries)
            token = Progress(f"rebuild:{run}:{stream}", after, 0, chunk[-1].seq)
            write_usage(conn, replay, keys, token, into)
            events += len(chunk)
            after = chunk[-1].seq
    return events


def _gap(progress: dict[str, Progress], meter: int, stream: str) -> tuple[int, int] | None:
    """The seqs ``(after, to]`` of ``stream`` that ``meter``'s rollups do not hold yet."""
    name = f"backfill:{meter}" if stream == LIVE else backfill_stream(meter, stream)
    b = progress.get(name)
    if b is not None:
        return (b.done, b.to) if b.done < b.to else None
    if stream != LIVE and not any((s := split_backfill(n)) and s[1] == stream for n in progress):
        return None  # written before backfills existed: its meters counted from their creation on
    return _ALL


def _runs(
    chunk: list[LedgerEntry], compiled: list[CompiledMeter], gaps: dict[int, tuple[int, int] | None]
) -> Iterator[tuple[list[CompiledMeter], list[LedgerEntry]]]:
    """The chunk cut into runs of entries that the same meters reflect, in order."""
    run: list[LedgerEntry] = []
    current: list[CompiledMeter] | None = None
    for e in chunk:
        applied = [m for m in compiled if not ((g := gaps[m.meter.key]) and g[0] < e.seq <= g[1])]
        if current is not None and applied != current:
            yield current, run
            run = []
        current = applied
        run.append(e)
    if current is not None and run:
        yield current, run


_STATES = "sum(count) AS c, sum(total) AS t, min(low) AS lo, max(high) AS hi, max(latest) AS la"
_KEY = "meter, level, subject, bucket, group_key"


def _compare(conn: Connection, meters: Sequence[Meter], into: str) -> tuple[dict[str, int], list[str]]:
    names = {m.key: f"{m.namespace}/{m.slug}" for m in meters}
    params: dict[str, Any] = {"m": sorted(names)}
    live = "has({m:Array(UInt64)}, meter)"
    details: list[str] = []

    def merged(table: str) -> str:
        return f"(SELECT {_KEY}, {_STATES} FROM {table} WHERE {live} GROUP BY {_KEY})"

    sql = (
        f"SELECT {_KEY}, a.c, a.t, a.lo, a.hi, a.la, b.c, b.t, b.lo, b.hi, b.la"
        f" FROM {merged('usage_rollups')} AS a FULL OUTER JOIN {merged(into + 'usage_rollups')} AS b USING ({_KEY})"
        f" WHERE (a.c, a.t, a.lo, a.hi, a.la) != (b.c, b.t, b.lo, b.hi, b.la) ORDER BY meter, subject, level, bucket"
    )
    rollups = conn.rows(sql, params)
    for meter, level, subject, bucket, group, *states in rollups:
        details.append(
            f"{_where(names, meter, level, subject, bucket, group)}: stored {_states(states[:5])};"
            f" rebuilt {_states(states[5:])}"
        )
    uniques = 0
    for side, first, second in (("stored", "", into), ("rebuilt", into, "")):
        cols = f"{_KEY}, value"
        sql = (
            f"SELECT DISTINCT {cols} FROM {first}usage_uniques WHERE {live}"
            f" EXCEPT SELECT DISTINCT {cols} FROM {second}usage_uniques WHERE {live}"
        )
        for meter, level, subject, bucket, group, value in conn.rows(f"SELECT * FROM ({sql}) ORDER BY {cols}", params):
            uniques += 1
            details.append(f"{_where(names, meter, level, subject, bucket, group)}: value {value!r} only {side}")
    sketches = _compare_sketches(conn, names, params, into, details)
    gauges = _compare_gauges(conn, names, params, into, details)
    dims = 0
    for side, first, second in (("stored", "", into), ("rebuilt", into, "")):
        cols = "meter, dim, value, is_subject"
        sql = (
            f"SELECT DISTINCT {cols} FROM {first}usage_dims WHERE {live}"
            f" EXCEPT SELECT DISTINCT {cols} FROM {second}usage_dims WHERE {live}"
        )
        for meter, dim, value, is_subject in conn.rows(f"SELECT * FROM ({sql}) ORDER BY {cols}", params):
            dims += 1
            what = f"subject {value!r}" if is_subject else f"group value {dim}={value!r}"
            details.append(f"meter {names[meter]}: {what} seen only {side}")
    differences = {"rollups": len(rollups), "uniques": uniques, "sketches": sketches, "gauges": gauges, "dims": dims}
    return differences, details


def _compare_gauges(
    conn: Connection, names: dict[int, str], params: dict[str, Any], into: str, details: list[str]
) -> int:
    """The buckets whose TIME_WEIGHTED_SUM states differ, joined per key (``gauges.compared``)."""
    live = "has({m:Array(UInt64)}, meter)"
    stored = compared(conn, "usage_gauges", live, params)
    rebuilt = compared(conn, f"{into}usage_gauges", live, params)
    differing = sorted(k for k in stored.keys() | rebuilt.keys() if stored.get(k) != rebuilt.get(k))
    for meter, level, subject, bucket, group in differing:
        where = _where(names, meter, level, subject, bucket, group)
        details.append(f"{where}: gauge state stored {stored.get((meter, level, subject, bucket, group))};"
                       f" rebuilt {rebuilt.get((meter, level, subject, bucket, group))}")  # fmt: skip
    return len(differing)


def _compare_sketches(
    conn: Connection, names: dict[int, str], params: dict[str, Any], into: str, details: list[str]
) -> int:
    """The buckets whose merged APPROX_UNIQUE_COUNT registers differ (a missing bucket has none)."""
    live = "has({m:Array(UInt64)}, meter)"

    def merged(table: str) -> str:
        return f"(SELECT {_KEY}, maxMap(registers) AS r FROM {table} WHERE {live} GROUP BY {_KEY})"

    sql = (
        f"SELECT {_KEY}, length(a.r.1), length(b.r.1), a.r != b.r AS differ"
        f" FROM {merged('usage_sketches')} AS a FULL OUTER JOIN {merged(into + 'usage_sketches')} AS b"
        f" USING ({_KEY}) WHERE differ ORDER BY meter, subject, level, bucket"
    )
    rows = conn.rows(sql, params)
    for meter, level, subject, bucket, group, stored, rebuilt, _ in rows:
        where = _where(names, meter, level, subject, bucket, group)
        details.append(f"{where}: sketch differs (stored {stored} registers set, rebuilt {rebuilt})")
    return len(rows)


def _where(names: dict[int, str], meter: int, level: int, subject: str, bucket: int, group: str) -> str:
    window = f"{level // 60}-minute window {rfc3339(bucket * 1_000_000)}"
    return f"meter {names[meter]} subject {subject!r} {window} group {group}"


def _states(s: Sequence[Any]) -> str:
    count, total, low, high, (at, seq, value) = s
    if not count:
        return "no row"
    latest = f"{_d(value)} at {rfc3339(at)} (offset {seq - 1})" if seq else "none"
    return f"count {count} sum {_d(total)} min {_d(low)} max {_d(high)} latest {latest}"


def _d(value: Any) -> str:
    return format(Decimal(value).normalize(), "f")


def _swap(conn: Connection, meters: Sequence[Meter], into: str) -> None:
    live = ", ".join(str(int(m.key)) for m in meters)  # integers, inlined: INSERT SELECT takes no bind parameters
    for name in TABLES:  # deleted meters' rows stay as they were
        conn.command(
            f"INSERT INTO {into}{name} SELECT * FROM {name} WHERE NOT has(CAST([{live}] AS Array(UInt64)), meter)"
            " SETTINGS insert_deduplicate = 0"
        )
    for name in TABLES:
        conn.command(f"EXCHANGE TABLES {name} AND {into}{name}")
