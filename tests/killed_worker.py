"""``meterline worker`` that kills itself (SIGKILL) at one chosen instant of the first batch
that holds a correction entry (for the corrections crash tests), or of its first batch (for
the hash chain's); everything else is the real worker process.

usage: python killed_worker.py CONFIG POINT
  POINT  before-insert: the batch's range is recorded and the fence checked, nothing inserted
         after-corrections: its raw events and applied corrections inserted, no rollups
         before-done: everything inserted, the new position not recorded
         before-chain: (first batch) raw events inserted, not the batch's chain link
         after-chain: (first batch) the chain link inserted, the new position not recorded
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from meterline.adapters.clickhouse import sink
from meterline.adapters.clickhouse.client import Connection
from meterline.bootstrap import open_worker
from meterline.cli.logs import setup_logging
from meterline.config import load_config
from meterline.domain.meters.fold import LedgerEntry


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    config_path, point = sys.argv[1:3]
    state = {"correcting": False}
    insert = Connection.insert
    rows_of = sink.correction_rows
    write_usage = sink.write_usage

    def correction_rows(conn: Connection, stream: str, entries: Any) -> Any:
        rows = rows_of(conn, stream, entries)
        if rows and point == "after-corrections":
            state["correcting"] = True
        return rows

    def inserting(self: Connection, table: str, *args: Any, **kwargs: Any) -> None:
        rows = args[1] if len(args) > 1 else kwargs.get("rows", [])
        if table == "events" and point == "before-insert" and any(r[-1] for r in rows):
            die()  # the raw row of a correction entry carries the seq it supersedes last
        if table == "ledger_chain" and point == "before-chain":
            die()
        insert(self, table, *args, **kwargs)
        if table == "ledger_chain" and point == "after-chain":
            die()
        if table == "usage_corrections" and state["correcting"] and rows:
            die()

    def usage(*args: Any, **kwargs: Any) -> None:
        write_usage(*args, **kwargs)
        if point == "before-done" and state.get("fixes"):
            die()

    def rows_noting(conn: Connection, stream: str, entries: list[LedgerEntry]) -> Any:
        rows = correction_rows(conn, stream, entries)
        state["fixes"] = bool(rows)
        return rows

    Connection.insert = inserting  # type: ignore[method-assign]
    sink.correction_rows = rows_noting  # type: ignore[assignment]
    sink.write_usage = usage  # type: ignore[assignment]
    if point not in ("before-insert", "after-corrections", "before-done", "before-chain", "after-chain"):
        raise SystemExit(f"unknown point {point!r}")
    config = load_config(Path(config_path))
    setup_logging(config.log.level, config.log.format)
    running = open_worker(config)
    try:
        running.sink.run()
    finally:
        running.close()


if __name__ == "__main__":
    main()
