"""Does pruning expired dedupe keys stall ingest? In-process, on the real writer (fsync "full").

    ./run bench dedupe_prune [--keys 1000000] [--duration 10] [--rounds 2] [--threads 8] [--batch 100]

A data directory is seeded with ``--keys`` ledger events (the dedupe index is built from them
when the directory is opened), all received at t0; the clock is then set to t0 + 3 h with a 1 h
dedupe window, so every key is expired and past the grace period: the pruner has the whole
backlog to forget. ``--threads`` threads then append ``--batch``-event requests with new ids
through ``ledger.append`` (waiting for each commit) for ``--duration`` seconds, on a fresh copy
of the seeded file per case:

- ``off``: the pruner is not running (ingest alone);
- ``on``: the pruner runs as in the server (batches of 500 keys, 10 ms apart while work is left).

``--threads 0`` runs no ingest: how fast the pruner clears the backlog of an idle server.

Cases alternate round by round. Prints events/s, request latency p50/p99/max, the keys pruned
during the run and the writer time per pruning batch.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
from _common import code_version, machine, percentile

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.database import DB_FILE
from meterline.adapters.sqlite.dedupe_prune import DedupePruner
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.adapters.sqlite.schema import connect
from meterline.domain.clock import FixedClock
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.meters.model import Aggregation, MeterSpec

LEDGER_INSERT = (
    "INSERT INTO events (seq, namespace, source, id, type, subject, time_us, received_us, digest, raw)"
    " VALUES (?,?,?,?,?,?,?,?,?,?)"
)

T0 = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z
HOUR = 3_600_000_000
LIMITS = Limits(10_000, 300_000_000, None)


def seed(data_dir: Path, keys: int) -> None:
    b = EmbeddedBackend(data_dir, IngestSettings(HOUR, 1000), FixedClock(T0))
    spec = MeterSpec(slug="n", event_type="t", aggregation=Aggregation.SUM, value_property="$.v")
    b.meters.create("default", spec)
    b.close()
    conn = connect(data_dir / DB_FILE, fsync="normal")
    raw = b'{"specversion":"1.0","id":"x","source":"seed","type":"t","subject":"acme","data":{"v":1}}'
    digest = b"\0" * 16
    step = 50_000
    for start in range(0, keys, step):
        ids = range(start, min(start + step, keys))
        conn.execute("BEGIN")
        conn.executemany(
            LEDGER_INSERT,
            ((i + 1, "default", "seed", f"k{i}", "t", "acme", T0, T0, digest, raw) for i in ids),
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def load(b: EmbeddedBackend, clock: FixedClock, threads: int, batch: int, duration: float) -> list[float]:
    """Latencies (seconds) of every request appended in ``duration``."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker(n: int) -> None:
        mine, i = [], 0
        while time.monotonic() < stop:
            events = [
                {"specversion": "1.0", "id": f"w{n}-{i}-{j}", "source": "load", "type": "t", "subject": "acme"}
                | {"data": {"v": 1}}
                for j in range(batch)
            ]
            body = msgspec.json.encode(events)
            found = decode_events(split_body(body, "batch", 10_000), "default", clock.now_us(), LIMITS)
            started = time.perf_counter()
            b.ledger.append("default", found).result(60)
            mine.append(time.perf_counter() - started)
            i += 1
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies


def run_case(seeded: Path, work: Path, prune: bool, opts: Any) -> dict[str, float]:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(seeded, work)
    clock = FixedClock(T0 + 3 * HOUR)
    b = EmbeddedBackend(work, IngestSettings(HOUR, 1000), clock)
    batch_times: list[float] = []
    if prune:
        pruner: DedupePruner = b.dedupe_pruner
        inner = pruner._delete_batch

        def timed(conn: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(conn)
            finally:
                batch_times.append(time.perf_counter() - started)

        pruner._delete_batch = timed  # type: ignore[method-assign]
        pruner.start()
    try:
        if opts.threads:
            latencies = sorted(load(b, clock, opts.threads, opts.batch, opts.duration))
        else:
            time.sleep(opts.duration)  # no ingest: how fast the backlog goes
            latencies = [0.0]
    finally:
        pruned = b.dedupe_pruner.pruned
        b.close()
    batch_times.sort()
    return {
        "events/s": len(latencies) * opts.batch / opts.duration if opts.threads else 0.0,
        "p50 ms": percentile(latencies, 50) * 1000,
        "p99 ms": percentile(latencies, 99) * 1000,
        "max ms": latencies[-1] * 1000,
        "pruned": pruned,
        "batch p50 ms": percentile(batch_times, 50) * 1000 if batch_times else 0.0,
        "batch max ms": batch_times[-1] * 1000 if batch_times else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    opts = parser.parse_args()
    print(f"{code_version()}; {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        seeded = Path(tmp) / "seeded"
        started = time.monotonic()
        seed(seeded, opts.keys)
        print(f"seeded {opts.keys:,} expired keys in {time.monotonic() - started:.1f} s")
        columns = ["events/s", "p50 ms", "p99 ms", "max ms", "pruned", "batch p50 ms", "batch max ms"]
        print(f"{'round':<6} {'pruner':<7} " + " ".join(f"{c:>12}" for c in columns))
        for r in range(opts.rounds):
            for prune in (False, True):
                got = run_case(seeded, Path(tmp) / "work", prune, opts)
                cells = " ".join(f"{got[c]:>12,.1f}" if c != "pruned" else f"{got[c]:>12,.0f}" for c in columns)
                print(f"{r + 1:<6} {'on' if prune else 'off':<7} {cells}", flush=True)


if __name__ == "__main__":
    main()
