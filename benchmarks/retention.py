"""Does removing expired raw events (retention) stall ingest? In-process, on the real writer
(fsync "full").

    ./run bench retention [--events 300000] [--duration 10] [--rounds 2] [--threads 8] [--batch 100]

A data directory is seeded with ``--events`` ledger events, all with event time and receipt at
t0, already aggregated and passed by the dedupe pruner, and linked into the hash chain (the
store's first open links them, as for a store from before the chain). The clock is then set to
t0 + 40 days with ``retention.raw_events`` = 30 days, so every seeded event is expired: the
pruner has the whole backlog before it. ``--threads`` threads append ``--batch``-event requests
with new ids through ``ledger.append`` (waiting for each commit) for ``--duration`` seconds, on a
fresh copy of the seeded directory per case:

- ``off``: the retention loop is not running (ingest alone);
- ``on``: it runs as in the server (batches of 500 entries, each checked against the chain,
  moved to a pruned marker and deleted; 10 ms apart while work is left).

``--threads 0`` runs no ingest: how fast the loop clears the backlog of an idle server.
Cases alternate round by round. Prints events/s, request latency p50/p99/max, the entries
removed during the run and the writer time per batch.
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
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.adapters.sqlite.retention import RetentionPruner
from meterline.adapters.sqlite.schema import connect
from meterline.domain.clock import FixedClock
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.meters.model import Aggregation, MeterSpec

LEDGER_INSERT = (
    "INSERT INTO events (seq, namespace, source, id, type, subject, time_us, received_us, digest, raw)"
    " VALUES (?,?,?,?,?,?,?,?,?,?)"
)
T0 = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z
DAY = 86_400_000_000
HOUR = 3_600_000_000
RAW = 30 * DAY
LIMITS = Limits(10_000, 300_000_000, None)


def settings() -> IngestSettings:
    return IngestSettings(HOUR, 1000)


def seed(data_dir: Path, events: int) -> None:
    b = EmbeddedBackend(data_dir, settings(), FixedClock(T0))
    spec = MeterSpec(slug="n", event_type="t", aggregation=Aggregation.SUM, value_property="$.v")
    b.meters.create("default", spec)
    b.close()
    conn = connect(data_dir / DB_FILE, fsync="normal")
    conn.execute("DELETE FROM meta WHERE key IN ('chain_anchor', 'chain_head')")  # link the seeded rows at open
    digest = b"\0" * 16
    for start in range(0, events, 50_000):
        conn.execute("BEGIN")
        rows = []
        for i in range(start, min(start + 50_000, events)):
            raw = b'{"specversion":"1.0","id":"k%d","source":"seed","type":"t","subject":"acme","data":{"v":1}}' % i
            rows.append((i + 1, "default", "seed", f"k{i}", "t", "acme", T0, T0, digest, raw))
        conn.executemany(LEDGER_INSERT, rows)
        conn.execute("COMMIT")
    for key in ("aggregated_seq", "dedupe_pruned_seq"):  # aggregated (no meter reads "seed") and keys forgotten
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(events)))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('dedupe_floor_us', ?)", (str(T0 + 1),))
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    EmbeddedBackend(data_dir, settings(), FixedClock(T0)).close()  # the chain is linked here, once


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
            found = decode_events(
                split_body(msgspec.json.encode(events), "batch", 10_000), "default", clock.now_us(), LIMITS
            )
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
    clock = FixedClock(T0 + 40 * DAY)
    b = EmbeddedBackend(work, settings(), clock, raw_events_us=RAW)
    batch_times: list[float] = []
    pruner: RetentionPruner = b.retention
    if prune:
        inner = pruner._timed

        def timed(conn: Any) -> int:
            started = time.perf_counter()
            try:
                return inner(conn)
            finally:
                batch_times.append(time.perf_counter() - started)

        pruner._timed = timed  # type: ignore[method-assign]
        pruner.start()
    try:
        if opts.threads:
            latencies = sorted(load(b, clock, opts.threads, opts.batch, opts.duration))
        else:
            time.sleep(opts.duration)  # no ingest: how fast the backlog goes
            latencies = [0.0]
    finally:
        pruner.close()
        removed = pruner.status().pruned
        b.close()
    batch_times.sort()
    return {
        "events/s": len(latencies) * opts.batch / opts.duration if opts.threads else 0.0,
        "p50 ms": percentile(latencies, 50) * 1000,
        "p99 ms": percentile(latencies, 99) * 1000,
        "max ms": latencies[-1] * 1000,
        "removed": removed,
        "batch p50 ms": percentile(batch_times, 50) * 1000 if batch_times else 0.0,
        "batch max ms": batch_times[-1] * 1000 if batch_times else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    opts = parser.parse_args()
    print(f"{code_version()}; {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        seeded = Path(tmp) / "seeded"
        started = time.monotonic()
        seed(seeded, opts.events)
        print(f"seeded {opts.events:,} expired events (chain linked) in {time.monotonic() - started:.1f} s")
        columns = ["events/s", "p50 ms", "p99 ms", "max ms", "removed", "batch p50 ms", "batch max ms"]
        print(f"{'round':<6} {'pruner':<7} " + " ".join(f"{c:>12}" for c in columns))
        for r in range(opts.rounds):
            for prune in (False, True):
                got = run_case(seeded, Path(tmp) / "work", prune, opts)
                cells = " ".join(f"{got[c]:>12,.1f}" if c != "removed" else f"{got[c]:>12,.0f}" for c in columns)
                print(f"{r + 1:<6} {'on' if prune else 'off':<7} {cells}", flush=True)


if __name__ == "__main__":
    main()
