"""The shared dedupe store of scale mode: PostgreSQL unique keys beside Redis with a pending state.

    ./run bench dedupe_store [--duration 5] [--prefill 200000] [--batches 1,100,1000] [--clients 1,4]

Starts its own servers on free 127.0.0.1 ports and stops them at the end: a throwaway PostgreSQL
cluster (initdb as the postgres user; fsync and synchronous_commit on, the defaults) and a
throwaway Redis (in memory, no persistence: the machine's usual setup). Each store is first
filled with ``--prefill`` confirmed keys. Then, per case (store x batch size x clients), each
client thread plays one API node with its own connection(s): it claims a request of ``batch``
new UUIDv4 keys, confirms them (the ack path: claim, durable write, confirm; the write itself is
not part of this measurement) and starts again, for ``--duration`` seconds. A last pass per
store re-sends confirmed keys (the retry path: claim answers DUPLICATE, no confirm).

Prints keys/s and the latency of claim + confirm per request (p50, p99).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from _common import code_version, free_port, machine, percentile

from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.dedupe import PgDedupe
from meterline.adapters.redis.dedupe import RedisDedupe
from meterline.domain.clock import SystemClock
from meterline.ports.dedupe import DedupeStore, EventKey, Verdict

PG_BIN = Path("/usr/lib/postgresql") / "15" / "bin"
LEASE_US = 30_000_000


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


def start_redis() -> tuple[str, Callable[[], None]]:
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

    return url, stop


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
    return {"keys_s": sum(done) / elapsed, "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--prefill", type=int, default=200_000)
    ap.add_argument("--batches", default="1,100,1000")
    ap.add_argument("--clients", default="1,4")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    print(f"# {machine()}\n# code: {code_version()}\n# prefill {args.prefill} keys, {args.duration} s per case")
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        pg_dsn, pg_stop = start_postgres(Path(tmp))
        redis_url, redis_stop = start_redis()
        dbs: list[PgDatabase] = []
        try:

            def pg_store() -> DedupeStore:
                dbs.append(PgDatabase(pg_dsn, max_size=1))
                return PgDedupe(dbs[-1], clock.now_us, lease_us=LEASE_US, window_us=86400 * 10**6)

            def redis_store() -> DedupeStore:
                client = redis.Redis.from_url(redis_url)
                return RedisDedupe(client, clock.now_us, lease_us=LEASE_US, window_us=86400 * 10**6)

            print(f"{'store':<10} {'batch':>6} {'clients':>7} {'keys/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
            for name, make in (("postgres", pg_store), ("redis", redis_store)):
                last = fill(make(), args.prefill)
                for batch in batches:
                    for n in clients:
                        r = run_case([make() for _ in range(n)], batch, args.duration, None)
                        print(
                            f"{name:<10} {batch:>6} {n:>7} {r['keys_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
                        )
                r = run_case([make()], 1000, args.duration, last)
                print(
                    f"{name + ' dup':<10} {1000:>6} {1:>7} {r['keys_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
                )
        finally:
            for db in dbs:
                db.close()
            redis_stop()
            pg_stop()


if __name__ == "__main__":
    main()
