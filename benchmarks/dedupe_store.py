"""The shared dedupe store of scale mode: PostgreSQL unique keys beside Redis with a pending state.

    ./run bench dedupe_store [--duration 5] [--prefill 200000] [--batches 1,100,1000] [--clients 1,4]
                             [--baseline OLD/src] [--rounds 1]

Starts its own servers on free 127.0.0.1 ports and stops them at the end: a throwaway PostgreSQL
cluster (initdb as the postgres user; fsync and synchronous_commit on, the defaults) and a
throwaway Redis (in memory, no persistence: the machine's usual setup). Each store is first
filled with ``--prefill`` confirmed keys. Then, per case (store x batch size x clients), each
client thread plays one API node with its own connection(s): it claims a request of ``batch``
new UUIDv4 keys, confirms them (the ack path: claim, durable write, confirm; the write itself is
not part of this measurement) and starts again, for ``--duration`` seconds. A last pass per
store re-sends confirmed keys (the retry path: claim answers DUPLICATE, no confirm).

Prints keys/s, the latency of claim + confirm per request (p50, p99) and the CPU spent per key
by the clients (the API nodes' side) and by the store's server processes.

Each case runs in a process of its own. With ``--baseline`` (the ``src/`` directory of another
checkout) every case is run for both, taking turns (the baseline first in even rounds, second
in odd ones), each code on a database (and a Redis key prefix) of its own on the same servers,
with the erasure secret both use in production: the side-by-side comparison of two versions of
the stores on one machine at one time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from _common import code_version, free_port, machine, percentile

from meterline.domain.clock import SystemClock
from meterline.ports.dedupe import DedupeStore, EventKey, Verdict

LEASE_US = 30_000_000
SECRET = bytes(range(32))
TICK = os.sysconf("SC_CLK_TCK")


def start_postgres(tmp: Path, options: str = "") -> tuple[str, Callable[[], None]]:
    """A cluster of its own under ``tmp`` (``options``: more server settings, ``-c name=value``)."""
    bin_dir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    data = tmp / "pg"
    data.mkdir()
    shutil.chown(data, "postgres")
    shutil.chown(tmp, "postgres")
    port = free_port()
    run = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run, str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "--no-sync"], check=True, capture_output=True
    )
    subprocess.run(
        [
            *run,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(tmp / "pg.log"),
            "-o",
            f"-h 127.0.0.1 -p {port} -k {data} -c max_connections=50 -c shared_buffers=256MB {options}",
            "start",
        ],
        check=True,
        capture_output=True,
    )

    def stop() -> None:
        subprocess.run(
            [*run, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], check=False, capture_output=True
        )

    return f"host=127.0.0.1 port={port} dbname=postgres user=postgres", stop


def start_redis() -> tuple[str, Callable[[], None], int]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

    def stop() -> None:
        proc.terminate()
        proc.wait(10)

    return url, stop, proc.pid


def new_keys(n: int) -> list[EventKey]:
    return [EventKey("default", "bench", str(uuid.uuid4()), b"digest-16-bytes!") for _ in range(n)]


def fill(store: DedupeStore, count: int) -> list[EventKey]:
    """Confirm ``count`` keys in requests of 1000; returns the last request's keys."""
    keys: list[EventKey] = []
    for _ in range(max(count // 1000, 1)):
        keys = new_keys(1000)
        store.confirm(store.claim(keys).token, keys)
    return keys


def run_case(stores: list[DedupeStore], batch: int, duration: float, retry: list[EventKey] | None) -> dict[str, Any]:
    lat: list[float] = []
    done = [0] * len(stores)
    stop_at = time.monotonic() + duration
    lock = threading.Lock()

    def client(i: int) -> None:
        mine: list[float] = []
        while time.monotonic() < stop_at:
            keys = retry[:batch] if retry else new_keys(batch)
            t0 = time.perf_counter()
            claims = stores[i].claim(keys)
            if retry:
                assert set(claims.verdicts) == {Verdict.DUPLICATE}
            else:
                assert stores[i].confirm(claims.token, keys) == [True] * batch
            mine.append(time.perf_counter() - t0)
            done[i] += batch
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(stores))]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    lat.sort()
    return {
        "keys": sum(done),
        "keys_s": sum(done) / elapsed,
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
    }


def server_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes and all their children so far."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid in pids or ppid in pids:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def worker(args: argparse.Namespace) -> None:
    """One case in this process (``--case``): prints its figures as one JSON line."""
    from meterline.adapters.postgres.database import PgDatabase
    from meterline.adapters.postgres.dedupe import PgDedupe
    from meterline.adapters.redis.dedupe import RedisDedupe

    kind, batch, clients, dup = args.case.split(",")
    clock, dbs = SystemClock(), []

    def make() -> DedupeStore:
        if kind == "postgres":
            dbs.append(PgDatabase(args.dsn, max_size=1))
            return PgDedupe(dbs[-1], clock.now_us, lease_us=LEASE_US, window_us=86400 * 10**6, secret=lambda: SECRET)
        client = redis.Redis.from_url(args.redis)
        return RedisDedupe(
            client, clock.now_us, lease_us=LEASE_US, window_us=86400 * 10**6, prefix=args.prefix, secret=lambda: SECRET
        )

    try:
        if args.prefill:
            fill(make(), args.prefill)
        stores = [make() for _ in range(int(clients))]
        retry = fill(stores[0], 1000) if dup == "dup" else None
        pids = [int(p) for p in args.server_pids.split(",")]
        cpu0, server0 = time.process_time(), server_cpu(pids)
        r = run_case(stores, int(batch), args.duration, retry)
        r["client_cpu_s"], r["server_cpu_s"] = time.process_time() - cpu0, server_cpu(pids) - server0
        print(json.dumps(r), flush=True)
    finally:
        for db in dbs:
            db.close()


def run_worker(src: str, base: list[str], case: str, prefill: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    out = subprocess.run(
        [sys.executable, __file__, *base, "--case", case, "--prefill", str(prefill)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def postmaster_pid(dsn_dir: Path) -> int:
    return int((dsn_dir / "pg" / "postmaster.pid").read_text().split()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--prefill", type=int, default=200_000)
    ap.add_argument("--batches", default="1,100,1000")
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--baseline", help="src/ directory of another checkout, measured too (taking turns)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--dsn", help=argparse.SUPPRESS)
    ap.add_argument("--redis", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--server-pids", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        worker(args)
        return
    batches = [int(b) for b in args.batches.split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    here = str(Path(__file__).resolve().parent.parent / "src")
    codes = [("this", here)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"# {machine()}\n# code: {code_version()}" + (f"; baseline: {args.baseline}" if args.baseline else ""))
    print(f"# prefill {args.prefill} keys per code and store, {args.duration} s per case, {args.rounds} round(s)")
    with tempfile.TemporaryDirectory() as tmp:
        pg_dsn, pg_stop = start_postgres(Path(tmp))
        redis_url, redis_stop, redis_pid = start_redis()
        try:
            pg_pid = postmaster_pid(Path(tmp))
            import psycopg

            with psycopg.connect(pg_dsn, autocommit=True) as admin:
                for name, _ in codes:
                    admin.execute(f"CREATE DATABASE bench_{name}".encode())
            cases = [
                (store, batch, n, "new") for store in ("postgres", "redis") for batch in batches for n in clients
            ] + [(store, 1000, 1, "dup") for store in ("postgres", "redis")]
            print(
                f"{'store':<13} {'batch':>6} {'clients':>7} {'code':<9} {'keys/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
                f" {'client us/key':>13} {'server us/key':>13}"
            )
            filled: set[tuple[str, str]] = set()
            for rnd in range(args.rounds):
                for store, batch, n, mode in cases:
                    for name, src in codes if rnd % 2 == 0 else list(reversed(codes)):
                        base = [
                            "--duration", str(args.duration),
                            "--dsn", pg_dsn.replace("dbname=postgres", f"dbname=bench_{name}"),
                            "--redis", redis_url, "--prefix", f"bench-{name}:",
                            "--server-pids", str(pg_pid if store == "postgres" else redis_pid),
                        ]  # fmt: skip
                        prefill = 0 if (name, store) in filled else args.prefill
                        filled.add((name, store))
                        r = run_worker(src, base, f"{store},{batch},{n},{mode}", prefill)
                        keys = r["keys"]
                        label = store + (" dup" if mode == "dup" else "")
                        print(
                            f"{label:<13} {batch:>6} {n:>7} {name:<9} {r['keys_s']:>9.0f} {r['p50_ms']:>8.2f}"
                            f" {r['p99_ms']:>8.2f} {r['client_cpu_s'] / keys * 1e6:>13.1f}"
                            f" {r['server_cpu_s'] / keys * 1e6:>13.1f}",
                            flush=True,
                        )
        finally:
            redis_stop()
            pg_stop()


if __name__ == "__main__":
    main()
