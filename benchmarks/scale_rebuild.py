"""``meterline rebuild`` in scale mode on the local stack: how long the usage tables take to be
recomputed from ClickHouse's raw events table, compared (``--check``) and swapped in, with two
sink workers running (held off by the fence meanwhile).

    ./run bench scale_rebuild [--events 20000] [--rounds 3]

Starts its own stack (docs/scale.md) on free 127.0.0.1 ports and stops it at the end:

1. appends ``--events`` events through the Kafka ledger (one sending process, 4 threads, 500-event
   requests; 500 subjects, 5 group values, 28 days) and lets two ``meterline worker`` processes
   apply them (4 partitions; a SUM meter with a group-by);
2. times ``rebuild_scale(check=True)`` ``--rounds`` times (the workers held off the whole time);
3. plants one rollup row, times ``rebuild_scale(check=False)`` (compare, then the swap), and
   checks once more that the result is identical.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from scale_sink import NS, _wait_count, seeded_site  # noqa: E402
from stack import launch  # noqa: E402

from meterline.adapters.clickhouse.client import Connection  # noqa: E402
from meterline.adapters.clickhouse.schema import ROLLUPS  # noqa: E402
from meterline.adapters.postgres.database import PgDatabase  # noqa: E402
from meterline.adapters.postgres.meters import PgMeters  # noqa: E402
from meterline.bootstrap import rebuild_scale  # noqa: E402
from meterline.config import load_config  # noqa: E402
from meterline.domain.clock import SystemClock  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="meterline-bench-"))
    stack = launch.up(root / "stack")
    try:
        run(stack, root, args.events, args.rounds)
    finally:
        launch.down(root / "stack")


def run(stack: launch.Stack, root: Path, events: int, rounds: int) -> None:
    print(f"load average before: {os.getloadavg()}")
    path = seeded_site(stack, root, "rebuild", events)
    config = load_config(path)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    env = {**os.environ, "METERLINE_LOG__LEVEL": "WARNING"}
    argv = [sys.executable, "-m", "meterline.cli.main", "worker", "--config", str(path)]
    logs = (root / "workers.log").open("ab")
    workers = [subprocess.Popen(argv, stdout=logs, stderr=subprocess.STDOUT, env=env) for _ in range(2)]
    try:
        _wait_count(conn, events, 0.1)
        for _ in range(rounds):
            started = time.perf_counter()
            report = rebuild_scale(config, check=True)
            took = time.perf_counter() - started
            assert report.identical and report.events == events, report
            print(f"rebuild --check: {took:.2f} s ({events / took:,.0f} raw events/s), identical")
        pg = PgDatabase(config.postgres.dsn)
        meter = PgMeters(pg, SystemClock().now_us).get(NS, "tokens")
        pg.close()
        planted = [meter.key, 3600, "c1", 1_769_940_000, '["m1"]', 1, Decimal(1), Decimal(0), Decimal(0),
                   (0, 0, Decimal(0))]  # fmt: skip
        conn.insert("usage_rollups", ROLLUPS, [planted], "bench:planted")
        started = time.perf_counter()
        report = rebuild_scale(config, check=False)
        took = time.perf_counter() - started
        assert report.replaced and report.differences["rollups"] == 1, report
        print(f"rebuild (1 planted row found, tables swapped): {took:.2f} s")
        assert rebuild_scale(config, check=True).identical
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)
        conn.close()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
