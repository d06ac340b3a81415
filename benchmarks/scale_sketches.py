"""APPROX_UNIQUE_COUNT and TIME_WEIGHTED_SUM queries over a month in scale mode (the local stack).

    ./run bench scale_sketches [--events 1000000] [--subjects 500] [--users 5000000]
                               [--rounds 5] [--budget 60] [--baseline OLD/src]

Starts its own stack (docs/scale.md) on free 127.0.0.1 ports and stops it at the end, then:

1. **seeds** ``--events`` events at random times through January 2026 (UTC; 744 hours), each
   with a random UUIDv4 id, one of ``--subjects`` customers, one of 4 models (a group-by), a
   ``user`` drawn from ``--users`` possible values (the APPROX_UNIQUE_COUNT meter's value) and a
   ``gpus`` reading (the TIME_WEIGHTED_SUM meter's gauge). The rows are the sink workers' own:
   the meters' fold (``domain.meters.fold.Replay``, both meters in one pass) over 20,000
   entries at a time in time order, inserted by ``adapters.clickhouse.usage.write_usage`` under
   each batch's tokens (``usage_sketches``, ``usage_gauges``, ``usage_dims``);
2. **queries** both meters through ``ClickHouseUsage.query`` (the API nodes' code, over HTTP to
   the stack's ClickHouse endpoint): the month's total, DAY windows, HOUR windows, and DAY
   windows per customer. Each code (this checkout, and with ``--baseline`` an older checkout's
   ``src/``) runs in its own process, the codes taking turns ``--rounds`` times (the order
   swapped every round); each query runs 3 times a round, fewer when the next run would take
   its runs past ``--budget`` seconds. Printed per query and code: p50 / p99 latency, the
   querying process's CPU (decoding and Python) and the ClickHouse endpoint's CPU (the chdb
   server process, all threads) per run. The codes' answers must be identical, value for value,
   or the run stops.

Bounded: everything listens on 127.0.0.1 only, the seed stops at ``--events`` and the stack is
stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import code_version, percentile, thread_cpu  # noqa: E402

from meterline.adapters.clickhouse.client import Connection  # noqa: E402
from meterline.adapters.clickhouse.progress import Progress  # noqa: E402
from meterline.adapters.clickhouse.usage import ClickHouseUsage, write_usage  # noqa: E402
from meterline.domain.meters.evaluate import CompiledMeter  # noqa: E402
from meterline.domain.meters.fold import LedgerEntry, Replay  # noqa: E402
from meterline.domain.meters.model import Aggregation, Meter, MeterSpec  # noqa: E402
from meterline.domain.meters.query import MeterQuery  # noqa: E402
from meterline.domain.meters.windows import WindowSize  # noqa: E402

NS = "default"
JAN = 1_767_225_600  # 2026-01-01T00:00:00Z
MONTH = 31 * 86_400
CHUNK = 20_000
DATABASE = "bench_sketches"
REPEAT = 3
"""Runs of each query per round and code (fewer when they would exceed ``--budget``)."""
METERS = [
    Meter(1, "visitors", NS, MeterSpec("visitors", "use", Aggregation.APPROX_UNIQUE_COUNT, value_property="$.user",
                                       group_by={"model": "$.model"}), 0),
    Meter(2, "gpus", NS, MeterSpec("gpus", "use", Aggregation.TIME_WEIGHTED_SUM, value_property="$.gpus",
                                   group_by={"model": "$.model"}), 0),
]  # fmt: skip
QUERIES: dict[str, MeterQuery] = {
    "month total": MeterQuery(start=JAN, end=JAN + MONTH),
    "DAY windows": MeterQuery(start=JAN, end=JAN + MONTH, window_size=WindowSize.DAY),
    "HOUR windows": MeterQuery(start=JAN, end=JAN + MONTH, window_size=WindowSize.HOUR),
    "DAY windows per customer": MeterQuery(
        start=JAN, end=JAN + MONTH, window_size=WindowSize.DAY, group_by=("subject",)
    ),
}


def entries(events: int, subjects: int, users: int, seed: int = 2026) -> Iterator[LedgerEntry]:
    """The seed in time order: random times, ids, customers, users and gauge readings."""
    rng = random.Random(seed)
    times = sorted(rng.randrange(MONTH * 1_000_000) for _ in range(events))
    for i, offset in enumerate(times):
        time_us = JAN * 1_000_000 + offset
        subject = f"customer-{rng.randrange(subjects):05d}"
        raw = json.dumps(
            {
                "specversion": "1.0",
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "source": "bench",
                "type": "use",
                "subject": subject,
                "data": {
                    "user": f"user-{rng.randrange(users)}",
                    "model": f"m{rng.randrange(4)}",
                    "gpus": rng.randrange(65),
                },
            }
        ).encode()
        yield LedgerEntry(i + 1, NS, "bench", "use", subject, time_us, raw, time_us)


def seed(conn: Connection, args: argparse.Namespace) -> float:
    """Fold and insert the seed as a sink worker does; events/s."""
    compiled = [CompiledMeter(m) for m in METERS]
    keys = {m.key for m in METERS}
    started = time.perf_counter()
    chunk: list[LedgerEntry] = []
    for entry in entries(args.events, args.subjects, args.users):
        chunk.append(entry)
        if len(chunk) == CHUNK:
            _batch(conn, compiled, keys, chunk)
            chunk = []
    if chunk:
        _batch(conn, compiled, keys, chunk)
    return args.events / (time.perf_counter() - started)


def _batch(conn: Connection, compiled: list[CompiledMeter], keys: set[int], chunk: list[LedgerEntry]) -> None:
    replay = Replay(10_000)
    replay.apply(compiled, chunk)
    write_usage(conn, replay, keys, Progress("bench", chunk[0].seq - 1, 0, chunk[-1].seq))


# -- one code's round of queries (a child process, PYTHONPATH = that code's src/) -------------


def round_of_queries(clickhouse: str, server_pid: int, budget: float) -> dict[str, Any]:
    """Every query of both meters, timed; what the parent aggregates (and compares)."""
    conn = Connection(clickhouse, DATABASE)
    usage = ClickHouseUsage(conn, lambda: METERS, lambda: (JAN + MONTH + 3600) * 1_000_000)
    out: dict[str, Any] = {}
    for meter in METERS:
        for name, query in QUERIES.items():
            runs: list[tuple[float, float, float]] = []
            answer: list[tuple[str, int, str]] = []
            while len(runs) < REPEAT and (not runs or sum(r[0] for r in runs) + runs[-1][0] < budget * 1000):
                server, cpu, started = _server_cpu(server_pid), time.process_time(), time.perf_counter()
                rows = usage.query(meter, query)
                wall = (time.perf_counter() - started) * 1000
                runs.append((wall, (time.process_time() - cpu) * 1000, (_server_cpu(server_pid) - server) * 1000))
                answer = sorted((r.subject or "", r.window_start, str(r.value)) for r in rows)
            out[f"{meter.spec.aggregation.value}|{name}"] = {"runs": runs, "answer": answer}
    conn.close()
    return out


def _server_cpu(pid: int) -> float:
    return sum(thread_cpu(pid).values())


# -- the parent ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=500)
    parser.add_argument("--users", type=int, default=5_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per query, code and round at most")
    parser.add_argument("--baseline", help="src/ directory of an older checkout, measured too (taking turns)")
    parser.add_argument("--child", nargs=2, metavar=("CLICKHOUSE", "PID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(round_of_queries(args.child[0], int(args.child[1]), args.budget)))
        return
    from stack import launch

    print(f"code: {code_version()}" + (f"; baseline: {args.baseline}" if args.baseline else ""))
    print(f"{args.events:,} events in January 2026, {args.subjects} customers, users from {args.users:,}")
    with tempfile.TemporaryDirectory() as tmp:
        stack = launch.up(Path(tmp) / "engines")
        try:
            run(stack, args)
        finally:
            launch.down(Path(tmp) / "engines")


def run(stack: Any, args: argparse.Namespace) -> None:
    conn = Connection(stack.clickhouse, DATABASE)
    ClickHouseUsage(conn, lambda: METERS, lambda: 0)  # creates the tables
    print(f"seed (fold + insert, both meters): {seed(conn, args):,.0f} events/s", flush=True)
    for table in ("usage_sketches", "usage_gauges"):
        rows = conn.rows(f"SELECT level, count() FROM {table} GROUP BY level ORDER BY level")
        print(f"{table} rows per level:", [(int(a), int(b)) for a, b in rows])
    conn.close()
    codes = [("this code", str(HERE.parent / "src"))]
    if args.baseline:
        codes.insert(0, ("baseline", str(Path(args.baseline).resolve())))
    results: dict[str, dict[str, list[Any]]] = {name: {} for name, _ in codes}
    answers: dict[str, Any] = {}
    for round_ in range(args.rounds):
        for name, src in codes if round_ % 2 == 0 else codes[::-1]:
            got = _child(stack, src, args.budget)
            for query, result in got.items():
                results[name].setdefault(query, []).extend(result["runs"])
                if answers.setdefault(query, result["answer"]) != result["answer"]:
                    raise SystemExit(f"{name} answered {query} differently")
        print(f"round {round_ + 1} of {args.rounds} done", flush=True)
    _print(results, answers, [name for name, _ in codes])


def _child(stack: Any, src: str, budget: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": src}
    args = [sys.executable, __file__, "--budget", str(budget), "--child", stack.clickhouse,
            str(stack.pids["clickhouse"])]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, check=False, timeout=3600)
    if done.returncode:
        raise SystemExit(f"query process failed:\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _print(results: dict[str, dict[str, list[Any]]], answers: dict[str, Any], codes: list[str]) -> None:
    print("\nms per query; CPU: the querying process / the ClickHouse endpoint, median per run")
    print("| meter | query | rows | code | runs | p50 | p99 | client CPU | server CPU |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for query in answers:
        aggregation, name = query.split("|")
        for code in codes:
            runs = results[code][query]
            walls = sorted(r[0] for r in runs)
            client = sorted(r[1] for r in runs)
            server = sorted(r[2] for r in runs)
            print(
                f"| {aggregation} | {name} | {len(answers[query]):,} | {code} | {len(runs)}"
                f" | {percentile(walls, 50):,.0f}"
                f" | {percentile(walls, 99):,.0f} | {percentile(client, 50):,.0f} | {percentile(server, 50):,.0f} |"
            )
    print("\nanswers identical across codes" if len(codes) > 1 else "")


if __name__ == "__main__":
    main()
