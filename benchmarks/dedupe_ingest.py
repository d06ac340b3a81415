"""Ingest with random UUIDv4 ids at millions of stored keys, through the real ingest path.

    ./run bench dedupe_ingest --baseline OLD/src [--keys 10000000] [--customers 10000]
        [--duration 10] [--events 300000] [--threads 2] [--rounds 2] [--dir DIR]

``OLD/src`` is the ``src/`` directory of a checkout from before the dedupe index (its dedupe
is the ``dedupe`` key table, a B-tree written per event). A data directory is created by that
version (one SUM meter grouped by region), then ``--keys`` ledger events with random UUIDv4 ids
spread over ``--customers`` subjects are bulk-loaded straight into its ledger, and their keys
into its ``dedupe`` table (in key order). The directory is copied: the copy is opened once by
the current code, which indexes the whole ledger (timed: the upgrade of an existing directory).

Then, taking turns ``--rounds`` times, each version runs in its own process (a real restart;
its memory is its own): ``--threads`` threads send 1000-event requests through
``backend.ledger.append`` (decode included, fsync full, group commit as in the server) for
``--duration`` seconds or ``--events`` events. Every request carries 5 keys sampled from the
seeded ledger, 5 of this run's recent keys and one repeat inside the request, besides new
UUIDv4 ids; the accepted and duplicate counts must equal what was injected, and the ledger
must grow by the accepted count (``exact``).

Printed per case: events/s; request latency p50/p99/max; the writer's time per event in the
dedupe lookup (``Appender._known``) and in the request's writes (``Appender._write``: the ledger
rows, and before the index also the key rows); the restart time; RSS at the end and its peak;
and the data directory's size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import code_version, machine, percentile

LEDGER_INSERT = (
    "INSERT INTO events (seq, namespace, source, id, type, subject, time_us, received_us, digest, raw)"
    " VALUES (?,?,?,?,?,?,?,?,?,?)"
)

T0 = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z: seeded events
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1", "sa-east-1")
HERE = Path(__file__).resolve().parent


def uuid4_ids(n: int) -> list[str]:
    """``n`` random UUIDv4 strings (version and variant bits set), faster than ``uuid.uuid4()``."""
    h = os.urandom(16 * n).hex()
    out = []
    for i in range(0, 32 * n, 32):
        s = h[i : i + 32]
        out.append(f"{s[:8]}-{s[8:12]}-4{s[13:16]}-{'89ab'[int(s[16], 16) & 3]}{s[17:20]}-{s[20:]}")
    return out


def rss_mb() -> tuple[float, float]:
    got = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            got[line.split(":")[0]] = int(line.split()[1]) / 1024
    return got["VmRSS"], got["VmHWM"]


def size_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


# --- seeding (runs with the baseline code on its path) ---------------------------------------


def seed(data: Path, keys: int, customers: int) -> None:
    from meterline.adapters.sqlite.backend import EmbeddedBackend
    from meterline.adapters.sqlite.database import DB_FILE
    from meterline.adapters.sqlite.ingest import IngestSettings
    from meterline.adapters.sqlite.schema import connect
    from meterline.domain.clock import FixedClock
    from meterline.domain.meters.model import Aggregation, MeterSpec

    b = EmbeddedBackend(data, IngestSettings(None, 1000), FixedClock(T0), fsync="normal")
    spec = MeterSpec(
        slug="n", event_type="t", aggregation=Aggregation.SUM, value_property="$.v", group_by={"region": "$.region"}
    )
    b.meters.create("default", spec)
    b.close()
    conn = connect(data / DB_FILE, fsync="normal")
    conn.execute("PRAGMA cache_size=-2000000")
    seq = 0
    while seq < keys:
        conn.execute("BEGIN")
        for _ in range(10):
            n = min(100_000, keys - seq)
            if n <= 0:
                break
            conn.executemany(LEDGER_INSERT, _rows(seq, uuid4_ids(n), customers))
            seq += n
        conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO dedupe SELECT namespace, source, id, seq, digest, received_us FROM events"
        " ORDER BY namespace, source, id"
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _rows(seq: int, ids: list[str], customers: int) -> list[tuple[Any, ...]]:
    rows = []
    for j, id_ in enumerate(ids):
        subject, region = f"customer-{random.randrange(customers)}", REGIONS[j % 4]
        raw = (
            f'{{"specversion":"1.0","id":"{id_}","source":"web","type":"t","subject":"{subject}",'
            f'"time":"2026-03-01T12:00:00Z","data":{{"v":1,"region":"{region}"}}}}'
        ).encode()
        rows.append((seq + j + 1, "default", "web", id_, "t", subject, T0, T0, os.urandom(16), raw))
    return rows


# --- one case, in its own process ---------------------------------------------------------------


def worker(opts: Any) -> None:
    import msgspec

    from meterline.adapters.sqlite.backend import EmbeddedBackend
    from meterline.adapters.sqlite.ingest import Appender, IngestSettings
    from meterline.domain.clock import SystemClock
    from meterline.domain.events.decode import Limits, decode_events, split_body

    spent = {"_known": 0.0, "_write": 0.0}
    for name in spent:  # the writer thread alone runs these: no lock needed
        inner = getattr(Appender, name)

        def timed(self: Any, *args: Any, _inner: Any = inner, _name: str = name) -> Any:
            t = time.perf_counter()
            try:
                return _inner(self, *args)
            finally:
                spent[_name] += time.perf_counter() - t

        setattr(Appender, name, timed)
    data = Path(opts.data)
    started = time.perf_counter()
    b = EmbeddedBackend(data, IngestSettings(None, 1000), SystemClock(), fsync="full")
    restart_s = time.perf_counter() - started
    if opts.open_only:
        wait = getattr(getattr(b, "dedupe", None), "wait", None)
        if wait is not None:
            wait()  # the merges the first open started
        b.close()
        print(json.dumps({"open s": restart_s, "open+merge s": time.perf_counter() - started, "hwm": rss_mb()[1]}))
        return
    reader = b.db.reader()
    top = reader.execute("SELECT max(seq) FROM events").fetchone()[0]
    old = [
        reader.execute("SELECT id, subject FROM events WHERE seq = ?", (s,)).fetchone()
        for s in random.sample(range(1, top + 1), 5000)
    ]
    limits = Limits(10_000, 300_000_000, None)
    lock = threading.Lock()
    totals = {"acc": 0, "dup": 0, "want_acc": 0, "want_dup": 0}
    latencies: list[float] = []
    recent: list[tuple[str, str]] = []
    stop = time.monotonic() + opts.duration

    def body(thread: int) -> tuple[bytes, int, int]:
        fresh = [(i, f"customer-{random.randrange(opts.customers)}") for i in uuid4_ids(989)]
        with lock:
            dups = random.sample(old, 5) + (random.sample(recent[-50_000:], 5) if len(recent) >= 5 else [])
        keys = [*fresh, *dups, fresh[0]]
        random.shuffle(keys)
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        events = [
            {"specversion": "1.0", "id": i, "source": "web", "type": "t", "subject": s, "time": stamp,
             "data": {"v": 1, "region": REGIONS[n % 4]}}
            for n, (i, s) in enumerate(keys)
        ]  # fmt: skip
        with lock:
            recent.extend(fresh)
        return msgspec.json.encode(events), len(fresh), len(dups) + 1

    def load(thread: int) -> None:
        mine = []
        while time.monotonic() < stop:
            with lock:
                if totals["acc"] + totals["dup"] >= opts.events:
                    break
            raw, n_fresh, n_dup = body(thread)
            t = time.perf_counter()
            found = decode_events(split_body(raw, "batch", 10_000), "default", SystemClock().now_us(), limits)
            outcomes = b.ledger.append("default", found).result(120)
            mine.append(time.perf_counter() - t)
            with lock:
                totals["acc"] += sum(o.status.value == "accepted" for o in outcomes)
                totals["dup"] += sum(o.status.value == "duplicate" for o in outcomes)
                totals["want_acc"] += n_fresh
                totals["want_dup"] += n_dup
        with lock:
            latencies.extend(mine)

    began = time.perf_counter()
    pool = [threading.Thread(target=load, args=(n,)) for n in range(opts.threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - began
    grown = reader.execute("SELECT max(seq) FROM events").fetchone()[0] - top
    b.close()
    rss, hwm = rss_mb()
    latencies.sort()
    n = totals["acc"] + totals["dup"]
    print(
        json.dumps(
            {
                "stored": top,
                "events/s": n / elapsed,
                "p50 ms": percentile(latencies, 50) * 1000,
                "p99 ms": percentile(latencies, 99) * 1000,
                "max ms": latencies[-1] * 1000,
                "lookup us": spent["_known"] / n * 1e6,
                "write us": spent["_write"] / n * 1e6,
                "restart s": restart_s,
                "rss MB": rss,
                "hwm MB": hwm,
                "disk GB": size_gb(data),
                "exact": totals["acc"] == totals["want_acc"]
                and totals["dup"] == totals["want_dup"]
                and grown == totals["acc"],
                "counts": [totals["acc"], totals["want_acc"], totals["dup"], totals["want_dup"], grown],
            }
        )
    )


# --- orchestration -------------------------------------------------------------------------------


def run(opts: Any, pythonpath: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    cmd = [sys.executable, str(HERE / "dedupe_ingest.py"), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", help="src/ directory of a checkout before the dedupe index")
    parser.add_argument("--keys", type=int, default=10_000_000, help="ledger events (keys) stored before the runs")
    parser.add_argument("--customers", type=int, default=10_000, help="distinct subjects")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of ingest per case")
    parser.add_argument("--events", type=int, default=300_000, help="at most this many events per case")
    parser.add_argument("--threads", type=int, default=2, help="threads sending 1000-event requests")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where the temporary data directories go")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--open-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.seed:
        seed(Path(opts.data), opts.keys, opts.customers)
        print("{}")
        return
    if opts.worker:
        worker(opts)
        return
    if not opts.baseline:
        parser.error("--baseline OLD/src is required")
    baseline, current = os.path.abspath(opts.baseline), str(HERE.parent / "src")
    print(f"code: {code_version()}; baseline: {opts.baseline}; {machine()}")
    common = ["--customers", str(opts.customers), "--duration", str(opts.duration), "--events", str(opts.events)]
    common += ["--threads", str(opts.threads)]
    with tempfile.TemporaryDirectory(dir=opts.dir) as tmp_name:
        before, after = Path(tmp_name) / "before", Path(tmp_name) / "after"
        t = time.monotonic()
        run(
            opts,
            baseline,
            "--seed",
            "--data",
            str(before),
            "--keys",
            str(opts.keys),
            "--customers",
            str(opts.customers),
        )
        print(
            f"seeded {opts.keys:,} events and keys in {time.monotonic() - t:.0f} s ({size_gb(before):.2f} GB)",
            flush=True,
        )
        shutil.copytree(before, after)
        first = run(opts, current, "--worker", "--open-only", "--data", str(after))
        print(
            f"first open of the copy by the current code (indexes the whole ledger): {first['open s']:.1f} s,"
            f" merges done after {first['open+merge s']:.1f} s, peak RSS {first['hwm']:.0f} MB;"
            f" data directory {size_gb(after):.2f} GB (was {size_gb(before):.2f} GB with the key table)",
            flush=True,
        )
        cols = [
            "events/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "lookup us",
            "write us",
            "restart s",
            "rss MB",
            "hwm MB",
            "disk GB",
        ]
        print(f"{'version':<10} {'stored':>11} " + " ".join(f"{c:>10}" for c in cols) + "  exact")
        for _ in range(opts.rounds):
            for label, path, data in (("key table", baseline, before), ("index", current, after)):
                r = run(opts, path, "--worker", "--data", str(data), *common)
                cells = " ".join(f"{r[c]:>10,.0f}" if c == "events/s" else f"{r[c]:>10.2f}" for c in cols)
                print(
                    f"{label:<10} {r['stored']:>11,} {cells}  {'yes' if r['exact'] else 'NO ' + str(r['counts'])}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
