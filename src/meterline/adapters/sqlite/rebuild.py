"""``rebuild``: recompute every derived table from the ledger and compare with what is stored.

Rollups are a pure function of the ledger and the meter definitions. Inside one write
transaction this first lets the aggregation catch up (whatever the aggregator had not applied
yet, live offset and backfills, applied exactly as the aggregator would), then replays the
whole ledger from offset 0 (in sequence order, every live meter, the same fold) into fresh
``rebuilt_*`` tables, counts the rows that differ from the stored tables in either direction,
and — unless only checking — swaps the fresh rows in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from meterline.adapters.sqlite.ingest import live_meters
from meterline.adapters.sqlite.recompute import Applied, applied_in_store, everything_to, recompute, roots_in
from meterline.adapters.sqlite.replay import CHUNK, Replay, ledger_rows, set_offset, stored_offset, write_replay
from meterline.adapters.sqlite.retention import hours_before
from meterline.adapters.sqlite.usage import backfills
from meterline.domain.integrity.rebuild import RebuildReport
from meterline.domain.meters.evaluate import CompiledMeter

DERIVED = ("rollups", "uniques", "sketches", "group_values", "meter_subjects", "summaries", "ledger_counts")


def rebuild(conn: sqlite3.Connection, *, cap: int, replace: bool) -> RebuildReport:
    """Run inside a write transaction (the writer, or ``BEGIN IMMEDIATE`` from the CLI). Only
    checking (``replace=False``) changes nothing, the catch-up included."""
    conn.execute("SAVEPOINT rebuild")
    try:
        return _rebuild(conn, cap, replace)
    finally:
        if not replace:
            conn.execute("ROLLBACK TO rebuild")
        conn.execute("RELEASE rebuild")


def _rebuild(conn: sqlite3.Connection, cap: int, replace: bool) -> RebuildReport:
    catch_up(conn, cap)
    for table in DERIVED:
        conn.execute(f"DROP TABLE IF EXISTS temp.rebuilt_{table}")
        conn.execute(f"CREATE TEMP TABLE rebuilt_{table} AS SELECT * FROM main.{table} WHERE 0")
        conn.execute(f"CREATE UNIQUE INDEX temp.rebuilt_{table}_pk ON rebuilt_{table} ({_pk(table)})")
    meters = [CompiledMeter(m) for m in live_meters(conn)]
    head = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    _replay(conn, Replay(cap, count_entries=True), meters, 0, head, "temp.rebuilt_", everything_to)
    _keep_pruned_periods(conn, hours_before(conn) // 1_000_000)
    differences = {table: _differ(conn, table) for table in DERIVED}
    if replace and any(differences.values()):
        for table in DERIVED:
            conn.execute(f"DELETE FROM main.{table}")
            conn.execute(f"INSERT INTO main.{table} SELECT * FROM temp.rebuilt_{table}")
    if replace:
        conn.execute("UPDATE meters SET backfill_done = backfill_to WHERE deleted_us IS NULL")
    for table in DERIVED:
        conn.execute(f"DROP TABLE temp.rebuilt_{table}")
    return RebuildReport(head, differences, replace and any(differences.values()))


def catch_up(conn: sqlite3.Connection, cap: int) -> int:
    """Apply what the aggregator has not applied yet: each backfilling meter's range, then the
    ledger after the live offset; returns the ledger head (the new live offset)."""
    meters = [CompiledMeter(m) for m in live_meters(conn)]
    replay = Replay(cap, count_entries=True)
    for key, dim, value in conn.execute("SELECT meter, dim, value FROM group_values"):
        replay.group_values.setdefault((key, dim), set()).add(value)
    for key, subject in conn.execute("SELECT meter, subject FROM meter_subjects"):
        replay.subjects.setdefault(key, set()).add(subject)
    head = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    offset = stored_offset(conn)
    set_offset(conn, head)  # before the replay: its recomputed hours reflect the whole ledger
    _replay(conn, replay, meters, offset, head, "", lambda end: applied_in_store(conn, end))
    replay.count_entries = False  # backfills re-read entries the live pass counted
    for todo in backfills(conn):
        one = [m for m in meters if m.meter.key == todo.meter]
        _replay(conn, replay, one, todo.done, todo.to, "", _backfilled(conn, head, todo.meter), backfill=True)
        conn.execute("UPDATE meters SET backfill_done = backfill_to WHERE key = ?", (todo.meter,))
    return head


def _backfilled(conn: sqlite3.Connection, head: int, meter: int) -> Callable[[int], Applied]:
    """What the rollups reflect once ``meter``'s backfill reached a chunk's end."""

    def at(upto: int) -> Applied:
        conn.execute("UPDATE meters SET backfill_done = ? WHERE key = ?", (upto, meter))
        return applied_in_store(conn, head)

    return at


def _replay(
    conn: sqlite3.Connection,
    replay: Replay,
    meters: list[CompiledMeter],
    start: int,
    end: int,
    prefix: str,
    applied: Callable[[int], Applied],
    *,
    backfill: bool = False,
) -> None:
    """Replay ``(start, end]`` in chunks; corrected chains are recomputed after each chunk with
    what ``applied(chunk end)`` says the target tables reflect (``adapters.sqlite.recompute``)."""
    done = start
    while done < end:
        upto = min(done + CHUNK, end)
        replay.apply(meters, ledger_rows(conn, done, upto))
        late = write_replay(conn, replay, prefix)
        roots = replay.corrected | (roots_in(conn, done, upto) if backfill else set())
        if roots or late:
            recompute(conn, replay, meters, roots, applied(upto), prefix, late=late)
            replay.corrected.clear()
        done = upto


_BUCKETED = ("rollups", "uniques", "summaries", "ledger_counts")


def _keep_pruned_periods(conn: sqlite3.Connection, before: int) -> None:
    """Retention removed raw events of hours before ``before`` (UTC seconds; 0: none): the
    stored rows of buckets starting before it are authoritative, the replay cannot make them.
    They go into the rebuilt tables as stored (not compared, kept by a rebuild); the values and
    subjects seen there stay too."""
    if not before:
        return
    for table in _BUCKETED:
        conn.execute(f"DELETE FROM temp.rebuilt_{table} WHERE bucket < ?", (before,))
        conn.execute(f"INSERT INTO temp.rebuilt_{table} SELECT * FROM main.{table} WHERE bucket < ?", (before,))
    for table in ("group_values", "meter_subjects"):
        conn.execute(f"INSERT OR IGNORE INTO temp.rebuilt_{table} SELECT * FROM main.{table}")


def _pk(table: str) -> str:
    return {
        "rollups": "meter, level, subject, bucket, group_key",
        "uniques": "meter, level, subject, bucket, group_key, value",
        "sketches": "meter, level, subject, bucket, group_key",
        "group_values": "meter, dim, value",
        "meter_subjects": "meter, subject",
        "summaries": "meter, level, subject, bucket, group_key",
        "ledger_counts": "namespace, type, bucket",
    }[table]


def _differ(conn: sqlite3.Connection, table: str) -> int:
    sql = (
        f"SELECT count(*) FROM (SELECT * FROM main.{table} EXCEPT SELECT * FROM temp.rebuilt_{table})"
        f" UNION ALL SELECT count(*) FROM (SELECT * FROM temp.rebuilt_{table} EXCEPT SELECT * FROM main.{table})"
    )
    return sum(int(r[0]) for r in conn.execute(sql))
