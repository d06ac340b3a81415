"""Scale mode: what ``ErasureGate`` (``services/log_erasure.py``) adds to a usage read: one
PostgreSQL round trip (the newest erasure id and whether one is unfinished) after each read.

    .venv/bin/python benchmarks/erasure_gate.py [--events 20000] [--reads 400]

Starts its own stack (Tansu, the chdb-backed ClickHouse endpoint, PostgreSQL, Redis; see
docs/scale.md) on free 127.0.0.1 ports and stops it at the end. Ingests ``--events`` events of
500 subjects over February 2026 through the Kafka ledger and applies them with one in-process
sink worker (the same as ``counter_check.py``), then times ``--reads`` meter queries of one
customer's ragged month (two subjects), each one read without the gate and through it,
alternating which goes first, so both share the machine's load:

1. ``plain``: ``ClickHouseUsage.query``, the read an API node's gate wraps;
2. ``gated``: the same read through ``ErasureGate.read`` over ``PgFence.erasures``, as every
   scale-mode usage read of an API node is (no erasure runs: one look after the read);
3. ``look``: the gate's PostgreSQL round trip alone (``PgFence.erasures``).

Per kind: wall-time p50 and p99, this process's CPU per read (``time.process_time``), and for
``look`` the PostgreSQL server's CPU per look (its processes' CPU over a block of looks); and
the median of the two reads' difference, pair by pair (what the gate adds, less noisy than the
difference of the medians on a loaded machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import code_version, machine, percentile  # noqa: E402
from counter_check import METERS, NS, RANGE, apply, ingest  # noqa: E402
from scale_site import Site, site  # noqa: E402
from stack import launch  # noqa: E402

from meterline.adapters.clickhouse.client import Connection  # noqa: E402
from meterline.adapters.clickhouse.usage import ClickHouseUsage  # noqa: E402
from meterline.adapters.postgres.database import PgDatabase  # noqa: E402
from meterline.adapters.postgres.fence import PgFence  # noqa: E402
from meterline.adapters.postgres.meters import PgMeters  # noqa: E402
from meterline.domain.clock import SystemClock  # noqa: E402
from meterline.domain.meters.query import MeterQuery  # noqa: E402
from meterline.services.log_erasure import ErasureGate  # noqa: E402


def postgres_cpu(stack: launch.Stack) -> float:
    """CPU seconds of the stack's PostgreSQL server so far (the postmaster and its backends)."""
    pid = int((Path(stack.pg_data) / "postmaster.pid").read_text().split()[0])
    main = psutil.Process(pid)
    total = 0.0
    for p in [main, *main.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def timed(fn: Callable[[], object], wall: list[float], cpu: list[float]) -> object:
    cpu0, started = time.process_time(), time.perf_counter()
    answer = fn()
    wall.append((time.perf_counter() - started) * 1000)
    cpu.append((time.process_time() - cpu0) * 1000)
    return answer


def reads(stack: launch.Stack, s: Site, n: int) -> None:
    config = s.config
    pg = PgDatabase(config.postgres.dsn)
    meters = PgMeters(pg, SystemClock().now_us)
    meter = meters.get(NS, "tokens")
    assert meter is not None
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    usage = ClickHouseUsage(conn, meters.live, SystemClock().now_us)
    fence = PgFence(pg, config.postgres.dsn)
    inside: list[float] = []  # the gate's own look, timed within each gated read

    def looked() -> tuple[int, bool]:
        started = time.perf_counter()
        state = fence.erasures()
        inside.append((time.perf_counter() - started) * 1000)
        return state

    gate = ErasureGate(looked, max_wait=5.0)
    wall: dict[str, list[float]] = {"plain": [], "gated": [], "look": []}
    cpu: dict[str, list[float]] = {"plain": [], "gated": [], "look": []}

    def month(subjects: tuple[str, ...]) -> Decimal:
        return sum((r.value for r in usage.query(meter, MeterQuery(*RANGE, subjects=subjects))), Decimal(0))

    try:
        for i in range(n):
            subjects = (f"c{i % 250}", f"c{250 + i % 250}")
            kinds = ["plain", "gated"] if i % 2 == 0 else ["gated", "plain"]
            answers = {}
            plain = partial(month, subjects)
            for kind in kinds:
                read = plain if kind == "plain" else partial(gate.read, plain)
                answers[kind] = timed(read, wall[kind], cpu[kind])
            assert answers["plain"] == answers["gated"], (subjects, answers)
            timed(fence.erasures, wall["look"], cpu["look"])
        server0, looks = postgres_cpu(stack), n * 5
        for _ in range(looks):  # the server's side of a look, over a block of its own
            fence.erasures()
        server_ms = (postgres_cpu(stack) - server0) * 1000 / looks
    finally:
        conn.close()
        pg.close()
    for kind in ("plain", "gated", "look"):
        ms = sorted(wall[kind])
        mean_cpu = sum(cpu[kind]) / len(cpu[kind])
        print(
            f"{kind:>6}: p50 {percentile(ms, 50):6.2f} ms, p99 {percentile(ms, 99):6.2f} ms,"
            f" this process's CPU {mean_cpu:5.2f} ms per read ({n} reads)"
        )
    diffs = sorted(g - p for g, p in zip(wall["gated"], wall["plain"], strict=True))
    print(f"  gated - plain, read by read: p50 {percentile(diffs, 50):+.2f} ms")
    inside.sort()
    print(
        f"  the gate's look within a gated read: p50 {percentile(inside, 50):.2f} ms,"
        f" p99 {percentile(inside, 99):.2f} ms"
    )
    print(f"  PostgreSQL server CPU per look: {server_ms:.3f} ms (over {looks} looks)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--reads", type=int, default=400)
    args = parser.parse_args()
    print(f"{code_version()}; {machine()}")
    root = Path(tempfile.mkdtemp(prefix="meterline-bench-"))
    stack = launch.up(root / "stack")
    try:
        with site(stack, root / "site", partitions=4, extra=METERS) as s:
            ingest(s, args.events)
            apply(s, args.events, counters=False)
            reads(stack, s, args.reads)
    finally:
        launch.down(root / "stack")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
