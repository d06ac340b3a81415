"""Reconciliation in scale mode on the local stack: how long ``GET /api/v1/reconciliation`` (what
``meterline reconcile`` and the scheduled job run) takes over a seeded namespace, and where the
time goes.

    ./run bench scale_reconcile [--events 100000] [--rounds 3]

Starts its own stack (docs/scale.md) on free 127.0.0.1 ports and stops it at the end:

1. appends ``--events`` events through the Kafka ledger (one sending process, 4 threads,
   500-event requests; 500 subjects, 5 group values, every day of February 2026) and lets two
   ``meterline worker`` processes apply them (4 partitions; a SUM meter with a group-by);
2. starts one ``meterline serve`` API node, creates a customer for each of the 500 subjects and
   voids 100 events (so 100 corrected hours are answered from the raw events);
3. times the reconciliation of February over HTTP ``--rounds`` times, by day and by month, and
   checks that every event is accepted and metered and nothing is unexplained;
4. times its parts in-process: the counts of the dashboard's view (``counted``: SQL aggregates
   of the raw and usage tables) and the ledger replay (``ledger_check``: every raw event of the
   range read and folded through the meter).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from scale_sink import MONTH, NS, _wait_count, seeded_site  # noqa: E402
from stack import launch  # noqa: E402

from meterline.adapters.clickhouse.client import Connection  # noqa: E402
from meterline.adapters.clickhouse.reconciliation import ClickHouseReconciliationCounts  # noqa: E402
from meterline.adapters.postgres.database import PgDatabase  # noqa: E402
from meterline.adapters.postgres.meters import PgMeters  # noqa: E402
from meterline.adapters.postgres.reconciliation import PgReconciliationCounts  # noqa: E402
from meterline.bootstrap import open_keys  # noqa: E402
from meterline.config import Config, load_config  # noqa: E402
from meterline.domain.auth.keys import parse_scopes  # noqa: E402
from meterline.domain.clock import SystemClock  # noqa: E402

SUBJECTS = 500
VOIDS = 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
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
    path = seeded_site(stack, root, "reconcile", events)
    config = load_config(path)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    env = {**os.environ, "METERLINE_LOG__LEVEL": "WARNING"}
    logs = (root / "processes.log").open("ab")
    worker = [sys.executable, "-m", "meterline.cli.main", "worker", "--config", str(path)]
    processes = [subprocess.Popen(worker, stdout=logs, stderr=subprocess.STDOUT, env=env) for _ in range(2)]
    try:
        _wait_count(conn, events, 0.1)
        url, key = serve(path, config, env, logs, processes)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
            seed(client)
            _wait_applied(conn, events + VOIDS)
            for grain in ("day", "month"):
                for _ in range(rounds):
                    timed(client, grain, events)
        parts(config, conn, rounds)
    finally:
        for p in processes:
            p.terminate()
            p.wait(30)
        conn.close()
    print(f"load average after: {os.getloadavg()}")


def serve(
    path: Path, config: Config, env: dict[str, str], logs: object, processes: list[subprocess.Popen[bytes]]
) -> tuple[str, str]:
    """A ready ``meterline serve`` node and an admin key of the namespace."""
    with open_keys(config) as keys:
        _, key = keys.create(NS, "bench", parse_scopes(["admin"]))
    port = _free_port()
    argv = [sys.executable, "-m", "meterline.cli.main", "serve", "--config", str(path), "--port", str(port)]
    node_env = {**env, "METERLINE_AUTH__BOOTSTRAP_ADMIN_KEY": "false"}  # its scheduled run: after an hour
    processes.append(subprocess.Popen(argv, stdout=logs, stderr=subprocess.STDOUT, env=node_env))  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return url, key
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the API node did not become ready")


def seed(client: httpx.Client) -> None:
    started = time.perf_counter()
    for i in range(SUBJECTS):
        r = client.post("/api/v1/customers", json={"key": f"c{i}", "name": f"C{i}", "subjectKeys": [f"c{i}"]})
        assert r.status_code == 201, r.text
    for i in range(0, VOIDS * 997, 997):
        r = client.post(f"/api/v1/events/load-{i}/void", json={"source": "bench", "reason": "bench"})
        assert r.status_code == 201, r.text
    print(f"{SUBJECTS} customers and {VOIDS} voids in {time.perf_counter() - started:.1f} s")


def timed(client: httpx.Client, grain: str, events: int) -> None:
    params = {"from": "2026-02-01", "to": "2026-02-28", "grain": grain}
    started = time.perf_counter()
    r = client.get("/api/v1/reconciliation", params=params)
    took = time.perf_counter() - started
    assert r.status_code == 200, r.text
    report = r.json()
    lines = [ln for ln in report["lines"] if ln["meter"] == "tokens"]
    accepted, metered = sum(ln["accepted"] for ln in lines), sum(ln["metered"] for ln in lines)
    assert report["unexplained"] == 0 and accepted == events and metered == events - VOIDS, report["differences"]
    what = f"GET /api/v1/reconciliation by {grain} ({len(report['periods'])} periods)"
    print(f"{what}: {took:.2f} s ({events / took:,.0f} raw events/s); accepted {accepted:,}, metered {metered:,}")


def parts(config: Config, conn: Connection, rounds: int) -> None:
    pg = PgDatabase(config.postgres.dsn)
    meters = [PgMeters(pg, SystemClock().now_us).get(NS, "tokens")]
    counts = ClickHouseReconciliationCounts(conn)
    receipts = PgReconciliationCounts(pg)
    start, end = MONTH
    for _ in range(rounds):
        t0 = time.perf_counter()
        counted = counts.counted(NS, meters, start, end)
        t1 = time.perf_counter()
        check = counts.ledger_check(NS, meters, start, end, counted.position, receipts.invoiced(NS, *_us(MONTH)))
        t2 = time.perf_counter()
        assert sum(check.accepted.values()) == sum(counted.accepted.values())
        print(f"parts: counted (the view's counts) {t1 - t0:.2f} s, ledger_check (the replay) {t2 - t1:.2f} s")
    pg.close()


def _us(span: tuple[int, int]) -> tuple[int, int]:
    return span[0] * 1_000_000, span[1] * 1_000_000


def _wait_applied(conn: Connection, want: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = conn.rows("SELECT sum(done) FROM usage_progress FINAL WHERE NOT startsWith(stream, 'backfill:')")
        if int(rows[0][0] or 0) >= want:
            return
        time.sleep(0.2)
    raise SystemExit("the workers did not apply the voids")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
