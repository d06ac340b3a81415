"""What the unknown-subject screen costs a scale-mode ingest request, beside the dedupe round trips.

    ./run bench scale_screen [--duration 5] [--customers 10000] [--clients 1,4]

Every ingest request of an API node in scale mode reads the namespace's unknown-subject policy
and which of the request's subjects customers claim, in one PostgreSQL round trip
(``PgQuarantine.screen``), before it claims its keys in the dedupe store and confirms them
after the durable write (``PgDedupe.claim`` / ``confirm``, two more transactions). This measures
those transactions alone, per single-event request (the shape where a per-request cost weighs
most), on a throwaway PostgreSQL cluster (started on a free 127.0.0.1 port, stopped at the end)
holding ``--customers`` customers with random UUIDv4 keys:

- ``dedupe``: claim + confirm of one new UUIDv4 key;
- ``screen``: the screen of one subject (a known customer);
- ``both``: screen, claim, confirm, as a request did before nodes remembered the screen (the Kafka
  write between them not included);
- ``cached accept`` / ``cached reject``: the screen through the node's ``ScreenCache`` (``[ingest]
  unknown_subjects_cache``, 1 s) under the default ``accept`` policy (no subject lookup while the
  policy is remembered) and under ``reject`` (claimed subjects remembered for 1 s each: with
  subjects picked at random among ``--customers``, most requests still ask PostgreSQL).

Each client thread plays one API node with a pool of its own (pool checks included, as in a
node). Printed per case: requests/s, p50 and p99 latency, and this process's CPU per request.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import code_version, machine, percentile
from dedupe_store import LEASE_US, start_postgres

from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.dedupe import PgDedupe
from meterline.adapters.postgres.erasure import PgErasureCatalog
from meterline.adapters.postgres.quarantine import PgQuarantine
from meterline.domain.clock import SystemClock
from meterline.domain.customers.model import UnknownSubjects
from meterline.ports.dedupe import EventKey
from meterline.services.screen_cache import ScreenCache

NAMESPACE = "default"


def seed_customers(db: PgDatabase, n: int) -> list[str]:
    keys = [str(uuid.uuid4()) for _ in range(n)]
    with db.tx() as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO customers (id, namespace, key, timezone, created_us, updated_us) VALUES (%s,%s,%s,'UTC',0,0)",
            [(f"c{i}", NAMESPACE, k) for i, k in enumerate(keys)],
        )
    return keys


def run_case(steps: list[Callable[[str], None]], subjects: list[str], duration: float) -> dict[str, Any]:
    lat: list[float] = []
    done = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client(step: Callable[[str], None]) -> None:
        mine: list[float] = []
        while time.monotonic() < stop_at:
            subject = random.choice(subjects)
            t0 = time.perf_counter()
            step(subject)
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)
            done[0] += len(mine)

    threads = [threading.Thread(target=client, args=(s,)) for s in steps]
    cpu0, started = time.process_time(), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu0
    lat.sort()
    return {
        "req_s": done[0] / elapsed,
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "cpu_us": cpu / max(done[0], 1) * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--clients", default="1,4")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    print(f"# {machine()}\n# code: {code_version()}\n# {args.customers} customers, {args.duration} s per case")
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        dsn, stop = start_postgres(Path(tmp))
        dbs: list[PgDatabase] = []
        try:
            dbs.append(PgDatabase(dsn, max_size=1))
            subjects = seed_customers(dbs[0], args.customers)

            def node() -> tuple[PgDedupe, PgQuarantine]:
                dbs.append(PgDatabase(dsn, max_size=2))
                secret = PgErasureCatalog(dbs[-1], clock.now_us).secret
                store = PgDedupe(dbs[-1], clock.now_us, lease_us=LEASE_US, window_us=86400 * 10**6, secret=secret)
                return store, PgQuarantine(dbs[-1], clock.now_us)

            def dedupe(d: PgDedupe, q: PgQuarantine) -> Callable[[str], None]:
                def step(subject: str) -> None:
                    keys = [EventKey(NAMESPACE, "bench", str(uuid.uuid4()), b"digest-16-bytes!")]
                    assert d.confirm(d.claim(keys).token, keys) == [True]

                return step

            def screen(d: PgDedupe, q: PgQuarantine) -> Callable[[str], None]:
                def step(subject: str) -> None:
                    assert subject in q.screen(NAMESPACE, [subject]).owned

                return step

            def cached(policy: UnknownSubjects) -> Callable[[PgDedupe, PgQuarantine], Callable[[str], None]]:
                def make(d: PgDedupe, q: PgQuarantine) -> Callable[[str], None]:
                    cache = ScreenCache(q, clock.now_us, 1_000_000, policy)

                    def step(subject: str) -> None:
                        screened = cache.screen(NAMESPACE, [subject])
                        assert policy is UnknownSubjects.ACCEPT or subject in screened.owned

                    return step

                return make

            def both(d: PgDedupe, q: PgQuarantine) -> Callable[[str], None]:
                first, second = screen(d, q), dedupe(d, q)

                def step(subject: str) -> None:
                    first(subject)
                    second(subject)

                return step

            print(f"{'case':<14} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>11}")
            for n in clients:
                for name, make in (
                    ("dedupe", dedupe),
                    ("screen", screen),
                    ("both", both),
                    ("cached accept", cached(UnknownSubjects.ACCEPT)),
                    ("cached reject", cached(UnknownSubjects.REJECT)),
                ):
                    r = run_case([make(*node()) for _ in range(n)], subjects, args.duration)
                    print(
                        f"{name:<14} {n:>7} {r['req_s']:>9.0f} {r['p50_ms']:>8.3f}"
                        f" {r['p99_ms']:>8.3f} {r['cpu_us']:>11.0f}"
                    )
        finally:
            for db in dbs:
                db.close()
            stop()


if __name__ == "__main__":
    main()
