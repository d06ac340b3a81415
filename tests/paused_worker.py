"""``meterline worker`` that stops itself (SIGSTOP, as a long GC pause or a frozen VM would)
at one chosen instant of its first batch, for the zombie-worker tests. The test resumes it with
SIGCONT; everything else is the real worker process.

usage: python paused_worker.py CONFIG POINT MARKS
  POINT  before-intent: after the batch's checks, before its range is recorded
         before-insert: after the range is recorded and the fence checked, before any insert
         before-done: after every insert (raw events, rollups), before the range is recorded done
  MARKS  a directory: ``paused`` is written just before the stop, ``result`` with what the
         paused batch's ``SinkStore.write`` answered once it returns
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.progress import Progress, ProgressTable
from meterline.adapters.clickhouse.sink import ClickHouseSink
from meterline.bootstrap import open_worker
from meterline.cli.logs import setup_logging
from meterline.config import load_config


def main() -> None:
    config_path, point, marks_dir = sys.argv[1:4]
    marks = Path(marks_dir)
    state = {"paused": False}

    def pause() -> None:
        if state["paused"]:
            return
        state["paused"] = True
        (marks / "paused").write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGSTOP)  # every thread stops, the Kafka heartbeats too

    if point == "before-intent":
        write_progress = ProgressTable.write

        def progress(self: ProgressTable, p: Progress, epoch: int = 0) -> Progress:
            if not p.stream.startswith("backfill:") and p.pending_end > p.done:
                pause()
            return write_progress(self, p, epoch)

        ProgressTable.write = progress  # type: ignore[method-assign]
    elif point == "before-done":
        write_done = ProgressTable.write

        def finishing(self: ProgressTable, p: Progress, epoch: int = 0) -> Progress:
            if not p.stream.startswith("backfill:") and p.pending_end == 0 and p.done > 0:
                pause()
            return write_done(self, p, epoch)

        ProgressTable.write = finishing  # type: ignore[method-assign]
    elif point == "before-insert":
        insert = Connection.insert

        def inserting(self: Connection, table: str, *args: Any, **kwargs: Any) -> None:
            if table == "events":
                pause()
            insert(self, table, *args, **kwargs)

        Connection.insert = inserting  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown point {point!r}")

    write = ClickHouseSink.write

    def written(self: ClickHouseSink, *args: Any) -> bool:
        ok = write(self, *args)
        if state["paused"] and not (marks / "result").exists():
            (marks / "result").write_text(str(ok))
        return ok

    ClickHouseSink.write = written  # type: ignore[method-assign]
    config = load_config(Path(config_path))
    setup_logging(config.log.level, config.log.format)
    running = open_worker(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: running.sink.stop())
    try:
        running.sink.run()
    finally:
        running.close()


if __name__ == "__main__":
    main()
