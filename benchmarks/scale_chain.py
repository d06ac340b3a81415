"""What the hash chain costs the sink worker (scale mode).

    ./run bench scale_chain [--events 60000] [--rounds 2]

1. **The chain alone**: the content digest of each entry and the batch's link
   (``domain.integrity.batches``) over 20,000 entries like the workers' (CloudEvents of about
   300 bytes), CPU µs per entry, best of 5.
2. **The worker, with and without it**: starts its own local stack (see docs/scale.md) and
   produces ``--events`` events once through the Kafka ledger into a topic of 4 partitions.
   Then one ``meterline worker`` applies the whole backlog into a fresh ClickHouse database,
   alternately the real worker (with the chain) and the same worker with the link insert
   replaced by nothing (what it did before the chain), ``--rounds`` times each. Per run:
   events/s from the first applied event to the last (the group join left out), and the
   worker process's CPU µs per event (``/proc``: on a shared machine the sizing figure).
3. **verify**: the chain walk of ``meterline verify`` (``services.partition_chain``, in process,
   without the rollups) over the last database applied with the chain: entries/s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from scale_sink import _count, ack_path, with_database  # noqa: E402
from stack import launch  # noqa: E402

from meterline.adapters.clickhouse.client import Connection  # noqa: E402
from meterline.adapters.clickhouse.schema import create  # noqa: E402
from meterline.config import load_config  # noqa: E402
from meterline.domain.integrity.batches import batch_link, entry_digest  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def chain_alone() -> float:
    """CPU µs per entry of the digest and the link, best of 5 over 20,000 entries."""
    raw = [
        (f'{{"specversion":"1.0","id":"{uuid.uuid4()}","source":"bench","type":"prompt","subject":"c{i % 500}",'
         f'"time":"2026-02-01T10:00:00Z","data":{{"tokens":"{i}.5","model":"m{i % 5}"}}}}').encode()
        for i in range(20_000)
    ]  # fmt: skip
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        digests = [entry_digest("default", "bench", "prompt", "c1", 1, 2, r, 0) for r in raw]
        for first in range(0, len(raw), 500):  # batches of 500
            seqs = list(range(first + 1, first + 501))
            batch_link(bytes(32), "t:0", first, first + 500, seqs, [2] * 500, digests[first : first + 500])
        best = min(best, time.process_time() - started)
    return best / len(raw) * 1e6


def worker_without_chain(config_path: str) -> None:
    """The real worker with the link insert replaced by nothing (the worker before the chain)."""
    from meterline.adapters.clickhouse.chain import ChainLinks
    from meterline.bootstrap import open_worker

    ChainLinks.link = lambda *args, **kwargs: None  # type: ignore[method-assign]
    running = open_worker(load_config(Path(config_path)))
    try:
        running.sink.run()
    finally:
        running.close()


def apply_backlog(path: Path, total: int, chain: bool, logs: Path) -> tuple[float, float]:
    """(events/s from the first applied event to the last, worker CPU µs per event)."""
    config = load_config(path)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    create(conn, config.clickhouse.dedupe_window, None)
    env = {**os.environ, "METERLINE_LOG__LEVEL": "WARNING"}
    argv = [sys.executable, "-m", "meterline.cli.main", "worker", "--config", str(path)]
    if not chain:
        argv = [sys.executable, __file__, "--worker", str(path)]
    proc = subprocess.Popen(argv, stdout=logs.open("ab"), stderr=subprocess.STDOUT, env=env)
    try:
        first = 0
        while (first := _count(conn)) == 0:
            time.sleep(0.02)
        started = time.perf_counter()
        while _count(conn) < total:
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        return (total - first) / elapsed, cpu / total * 1e6
    finally:
        proc.terminate()
        proc.wait(30)
        conn.close()


def walk(path: Path) -> None:
    from meterline.bootstrap import open_partition_chain
    from meterline.services.partition_chain import verify_partitions

    started, cpu = time.perf_counter(), time.process_time()
    with open_partition_chain(load_config(path)) as source:
        report = verify_partitions(source)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert report.ok, report.problems
    entries = sum(p.entries for p in report.partitions)
    print(f"verify (chain walk): {entries:,} entries in {elapsed:.2f} s ({entries / elapsed:,.0f} entries/s,"
          f" {cpu / entries * 1e6:.1f} µs CPU per entry in the verifying process)")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker_without_chain(sys.argv[2])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"chain alone (digest + link): {chain_alone():.2f} µs CPU per entry")
    root = Path(tempfile.mkdtemp(prefix="meterline-bench-"))
    stack = launch.up(root / "stack")
    try:
        topic = f"bench{uuid.uuid4().hex[:8]}"
        produced = with_database(stack, root, "produce", topic, stack.postgres)
        from meterline.adapters.kafka.ledger import ensure_topic

        kafka = load_config(produced).kafka
        ensure_topic(kafka.bootstrap_servers, topic, kafka.partitions, 1)
        ack_path(produced, args.events, 500, 4, 1, 0)
        chained = produced
        for n in range(args.rounds):
            for chain in (True, False):
                path = with_database(stack, root, f"apply{n}{'c' if chain else 'n'}", topic, stack.postgres)
                rate, cpu = apply_backlog(path, args.events, chain, root / "workers.log")
                label = "with the chain   " if chain else "without the chain"
                print(f"1 worker {label}: {rate:,.0f} events/s, {cpu:.1f} µs CPU per event ({args.events:,} events)")
                chained = path if chain else chained
        walk(chained)
    finally:
        launch.down(root / "stack")


if __name__ == "__main__":
    main()
