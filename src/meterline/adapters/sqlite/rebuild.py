"""``rebuild``: recompute every derived table from the ledger and compare with what is stored.

Rollups are a pure function of the ledger and the meter definitions. This replays the whole
ledger (in sequence order, every live meter, the same rules as live ingest and backfill) into
fresh ``rebuilt_*`` tables inside one write transaction, counts the rows that differ from the
stored tables in either direction, and — unless only checking — swaps the fresh rows in.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from meterline.adapters.sqlite.ingest import live_meters
from meterline.adapters.sqlite.replay import CHUNK, Replay, ledger_rows
from meterline.domain.meters.evaluate import CompiledMeter

DERIVED = ("rollups", "uniques", "group_values", "meter_subjects")


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    differences: dict[str, int]
    replaced: bool

    @property
    def identical(self) -> bool:
        return not any(self.differences.values())


def rebuild(conn: sqlite3.Connection, *, cap: int, replace: bool) -> RebuildReport:
    """Run inside a write transaction (the writer, or ``BEGIN IMMEDIATE`` from the CLI)."""
    for table in DERIVED:
        conn.execute(f"DROP TABLE IF EXISTS temp.rebuilt_{table}")
        conn.execute(f"CREATE TEMP TABLE rebuilt_{table} AS SELECT * FROM main.{table} WHERE 0")
        conn.execute(f"CREATE UNIQUE INDEX temp.rebuilt_{table}_pk ON rebuilt_{table} ({_pk(table)})")
    meters = [CompiledMeter(m) for m in live_meters(conn)]
    head = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    replay = Replay(cap)
    done = 0
    while done < head:
        upto = min(done + CHUNK, head)
        replay.apply(meters, ledger_rows(conn, done, upto))
        replay.flush(conn, prefix="temp.rebuilt_")
        done = upto
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


def _pk(table: str) -> str:
    return {
        "rollups": "meter, level, subject, bucket, group_key",
        "uniques": "meter, level, subject, bucket, group_key, value",
        "group_values": "meter, dim, value",
        "meter_subjects": "meter, subject",
    }[table]


def _differ(conn: sqlite3.Connection, table: str) -> int:
    sql = (
        f"SELECT count(*) FROM (SELECT * FROM main.{table} EXCEPT SELECT * FROM temp.rebuilt_{table})"
        f" UNION ALL SELECT count(*) FROM (SELECT * FROM temp.rebuilt_{table} EXCEPT SELECT * FROM main.{table})"
    )
    return sum(int(r[0]) for r in conn.execute(sql))
