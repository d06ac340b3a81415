"""APPROX_UNIQUE_COUNT in scale mode: writing sketches and querying a month (the local stack).

    ./run bench scale_approx [--events 500000] [--subjects 100] [--users 50000] [--rounds 20]

Starts its own stack (docs/scale.md) on free 127.0.0.1 ports and stops it at the end, then:

1. **writes** ``--events`` events spread evenly through February 2026 (UTC; ``--subjects``
   customers, values from ``--users`` distinct users, 4 models as a group-by) through the sink
   workers' write path: the meters' fold (``domain.meters.fold.Replay``) over 20,000 entries at
   a time, in time order as a partition delivers them, and ``adapters.clickhouse.usage.write_usage``
   under each batch's tokens — for an APPROX_UNIQUE_COUNT meter and, for comparison, a
   UNIQUE_COUNT meter of the same values (each measured alone: events/s of fold + insert);
2. **queries** both through ``ClickHouseUsage.query`` (the API nodes' code, over HTTP to the
   stack's ClickHouse endpoint), ``--rounds`` times each: the month's total, the month per
   customer, DAY windows per customer, HOUR windows; p50 / p99, and every APPROX answer checked
   against the sketch of the exact values (built in Python from the seed);
3. the same queries after ``OPTIMIZE TABLE usage_sketches FINAL`` (each bucket's batches merged
   into one row, as background merges leave a month no longer written).

Bounded: everything listens on 127.0.0.1 only and the seed stops at ``--events``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import code_version, percentile  # noqa: E402
from stack import launch  # noqa: E402

from meterline.adapters.clickhouse.client import Connection  # noqa: E402
from meterline.adapters.clickhouse.progress import Progress  # noqa: E402
from meterline.adapters.clickhouse.usage import ClickHouseUsage, write_usage  # noqa: E402
from meterline.domain.meters.evaluate import CompiledMeter  # noqa: E402
from meterline.domain.meters.fold import LedgerEntry, Replay  # noqa: E402
from meterline.domain.meters.model import Aggregation, Meter, MeterSpec  # noqa: E402
from meterline.domain.meters.query import MeterQuery  # noqa: E402
from meterline.domain.meters.sketch import Sketch  # noqa: E402
from meterline.domain.meters.windows import WindowSize  # noqa: E402

NS = "default"
FEB = 1_769_904_000  # 2026-02-01T00:00:00Z
MONTH = 28 * 86_400
CHUNK = 20_000


def entries(events: int, subjects: int, users: int) -> Iterator[tuple[LedgerEntry, str, str]]:
    """The seed, in time order: (entry, subject, user)."""
    for i in range(events):
        time_us = (FEB * 1_000_000) + i * (MONTH * 1_000_000 // events)
        subject, user = f"c{(i * 7919) % subjects}", f"u{(i * 104_729) % users}"
        raw = (
            f'{{"specversion":"1.0","id":"e{i}","source":"b","type":"visit","subject":"{subject}",'
            f'"data":{{"user":"{user}","model":"m{i % 4}"}}}}'
        ).encode()
        yield LedgerEntry(i + 1, NS, "b", "visit", subject, time_us, raw, time_us), subject, user


def write(conn: Connection, meter: Meter, events: int, subjects: int, users: int) -> float:
    """Fold and insert the seed for ``meter`` alone, as a worker does; events/s."""
    compiled = [CompiledMeter(meter)]
    started = time.perf_counter()
    chunk: list[LedgerEntry] = []
    for entry, _, _ in entries(events, subjects, users):
        chunk.append(entry)
        if len(chunk) == CHUNK:
            _batch(conn, compiled, chunk)
            chunk = []
    if chunk:
        _batch(conn, compiled, chunk)
    return events / (time.perf_counter() - started)


def _batch(conn: Connection, compiled: list[CompiledMeter], chunk: list[LedgerEntry]) -> None:
    replay = Replay(10_000)
    replay.apply(compiled, chunk)
    token = Progress(f"bench:{compiled[0].meter.key}", chunk[0].seq - 1, 0, chunk[-1].seq)
    write_usage(conn, replay, {compiled[0].meter.key}, token)


def expected(events: int, subjects: int, users: int) -> tuple[int, dict[str, int]]:
    """The estimates of the month's sketch and of each customer's."""
    whole = Sketch()
    by_subject: dict[str, Sketch] = {}
    for _, subject, user in entries(events, subjects, users):
        whole.add(user)
        by_subject.setdefault(subject, Sketch()).add(user)
    return whole.estimate(), {s: k.estimate() for s, k in by_subject.items()}


QUERIES: dict[str, MeterQuery] = {
    "month total": MeterQuery(start=FEB, end=FEB + MONTH),
    "month per customer": MeterQuery(start=FEB, end=FEB + MONTH, group_by=("subject",)),
    "DAY windows per customer": MeterQuery(
        start=FEB, end=FEB + MONTH, window_size=WindowSize.DAY, group_by=("subject",)
    ),
    "HOUR windows": MeterQuery(start=FEB, end=FEB + MONTH, window_size=WindowSize.HOUR),
}


def timed(call: Callable[[], Any], rounds: int) -> tuple[float, float, Any]:
    times, out = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        out = call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return percentile(times, 50), percentile(times, 99), out


def report(usage: ClickHouseUsage, meters: list[Meter], rounds: int, want: tuple[int, dict[str, int]]) -> None:
    for name, query in QUERIES.items():
        for meter in meters:
            p50, p99, rows = timed(lambda m=meter, q=query: usage.query(m, q), rounds)  # type: ignore[misc]
            if meter.spec.aggregation is Aggregation.APPROX_UNIQUE_COUNT and name == "month total":
                assert [int(r.value) for r in rows] == [want[0]], (rows, want[0])
            if meter.spec.aggregation is Aggregation.APPROX_UNIQUE_COUNT and name == "month per customer":
                assert {r.subject: int(r.value) for r in rows} == want[1]
            label = meter.spec.aggregation.value
            print(f"| {name} | {label} | {len(rows):,} | {p50:.1f} | {p99:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"meterline {code_version()}; {args.events:,} events, {args.subjects} customers, {args.users:,} users")
    with tempfile.TemporaryDirectory() as tmp:
        stack = launch.up(Path(tmp) / "engines")
        try:
            run(stack, args)
        finally:
            launch.down(Path(tmp) / "engines")


def run(stack: launch.Stack, args: argparse.Namespace) -> None:
    conn = Connection(stack.clickhouse, "bench_approx")
    meters = [
        Meter(1, "approx", NS, MeterSpec("approx", "visit", Aggregation.APPROX_UNIQUE_COUNT, value_property="$.user",
                                         group_by={"model": "$.model"}), 0),
        Meter(2, "exact", NS, MeterSpec("exact", "visit", Aggregation.UNIQUE_COUNT, value_property="$.user",
                                        group_by={"model": "$.model"}), 0),
    ]  # fmt: skip
    usage = ClickHouseUsage(conn, lambda: meters, lambda: (FEB + MONTH) * 1_000_000)
    for meter in meters:
        rate = write(conn, meter, args.events, args.subjects, args.users)
        print(f"write {meter.spec.aggregation.value}: {rate:,.0f} events/s (fold + insert)", flush=True)
    rows = conn.rows(
        "SELECT level, count(), sum(length(registers.1)) FROM usage_sketches GROUP BY level ORDER BY level"
    )
    print("usage_sketches rows per level (rows, registers):", [(int(a), int(b), int(c)) for a, b, c in rows])
    uniques = conn.rows("SELECT level, count() FROM usage_uniques GROUP BY level ORDER BY level")
    print("usage_uniques rows per level:", [(int(a), int(b)) for a, b in uniques])
    want = expected(args.events, args.subjects, args.users)
    print("\n| query | meter | rows | p50 ms | p99 ms |\n|---|---|---|---|---|")
    report(usage, meters, args.rounds, want)
    conn.command("OPTIMIZE TABLE usage_sketches FINAL")
    left = int(conn.rows("SELECT count() FROM usage_sketches")[0][0])
    print(f"\nafter OPTIMIZE TABLE usage_sketches FINAL ({left:,} rows):")
    print("| query | meter | rows | p50 ms | p99 ms |\n|---|---|---|---|---|")
    report(usage, meters[:1], args.rounds, want)


if __name__ == "__main__":
    main()
