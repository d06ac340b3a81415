"""Rewriting the catalog's tables after a scale-mode erasure (``adapters/postgres/compaction.py``):
how long each ``VACUUM (FULL, ANALYZE)`` takes, what the PostgreSQL server spends on it, and how
long a write of the table being rewritten waits meanwhile.

    ./run bench erasure_rewrite [--rows 1000,10000,100000] [--payload 600]

Starts its own PostgreSQL cluster (initdb as the postgres user; fsync and synchronous_commit
on, the defaults; shared_buffers 256 MB) on a free 127.0.0.1 port and stops it at the end. Per size: a fresh schema
whose ``dead_letters`` and ``quarantine`` hold ``rows`` rows each (a ``payload``-byte raw event
per row) and the other rewritten tables 100 rows each; 1 % of the rows deleted (an erasure's
share); then, while one thread inserts a dead letter per transaction (as an API node records a
rejected event), one pass of ``PgCatalogFiles`` over every table (lock timeout 0.5 s). Before
the pass the same thread inserts alone for 2 s (the baseline).

Prints per size: each table's rewrite time, the pass's total, the server's CPU seconds during
the pass (every process of the cluster: the rewrite's backend, the inserts' backend, the
checkpointer and WAL writer), and the inserts' latency before and during the pass (p50, p99,
max: the longest is the stall a rewrite of ``dead_letters`` causes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
from _common import code_version, machine, percentile
from dedupe_store import start_postgres
from psycopg.conninfo import make_conninfo

from meterline.adapters.postgres.compaction import PgCatalogFiles
from meterline.adapters.postgres.database import PgDatabase

TICK = os.sysconf("SC_CLK_TCK")


def cluster_cpu(data: Path) -> float:
    """CPU seconds used so far by the cluster's processes (the postmaster and its children)."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(proc.name) == postmaster or int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return total


def fill(dsn: str, rows: int, payload: int) -> None:
    raw = ("x" * payload).encode()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dead_letters (namespace, received_us, reason, message, source, event_id, raw)"
            " SELECT 'ns', g, 'invalid', 'bad', 'src', 'evt-' || g, %s FROM generate_series(1, %s) g",
            (raw, rows),
        )
        conn.execute(
            "INSERT INTO quarantine (namespace, source, event_id, type, subject, time_us, received_us, digest,"
            " raw, token) SELECT 'ns', 'src', 'evt-' || g, 'request', 'subject-' || (g %% 1000), g, g, '\\x00',"
            " %s, 't' FROM generate_series(1, %s) g",
            (raw, rows),
        )
        conn.execute(
            "INSERT INTO portal_tokens SELECT 'tok-' || g, 'ns', 'subject-' || g, NULL, 0, 1, NULL"
            " FROM generate_series(1, 100) g"
        )
        conn.execute(
            "INSERT INTO customer_subjects SELECT 'ns', 'subject-' || g, 'c' || g FROM generate_series(1, 100) g"
        )
        conn.execute("DELETE FROM dead_letters WHERE id % 100 = 0")
        conn.execute("DELETE FROM quarantine WHERE id % 100 = 0")
        conn.execute("CHECKPOINT")


def inserting(dsn: str, stop: threading.Event, waits: list[float]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            start = time.perf_counter()
            conn.execute(
                "INSERT INTO dead_letters (namespace, received_us, reason, message, raw)"
                " VALUES ('ns', 0, 'invalid', 'bad', '\\x00')"
            )
            waits.append(time.perf_counter() - start)
            time.sleep(0.002)


def measure(base: str, data: Path, rows: int, payload: int) -> None:
    schema = "b_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    dsn = make_conninfo(base, options=f"-c search_path={schema}")
    PgDatabase(dsn, max_size=1).close()  # the migrations
    fill(dsn, rows, payload)
    with psycopg.connect(dsn, autocommit=True) as conn:
        size = conn.execute("SELECT pg_total_relation_size('dead_letters')").fetchone()
    stop, alone, during = threading.Event(), [], []
    thread = threading.Thread(target=inserting, args=(dsn, stop, alone))
    thread.start()
    time.sleep(2.0)
    stop.set()
    thread.join()
    stop = threading.Event()
    thread = threading.Thread(target=inserting, args=(dsn, stop, during))
    thread.start()
    time.sleep(0.2)
    times: dict[str, float] = {}
    outcomes: dict[str, str] = {}
    cpu = cluster_cpu(data)
    begin = time.perf_counter()
    files = PgCatalogFiles(dsn)
    with files.rewriting() as rewriter:
        assert rewriter is not None
        for table in files.tables:
            start = time.perf_counter()
            outcomes[table] = rewriter.rewrite(table, 0.5)
            times[table] = time.perf_counter() - start
    total = time.perf_counter() - begin
    cpu = cluster_cpu(data) - cpu
    time.sleep(0.2)
    stop.set()
    thread.join()
    mb = (size[0] if size else 0) / 1e6
    print(f"\n{rows:,} rows in dead_letters and quarantine ({mb:.1f} MB each), 1 % deleted:")
    print("  " + ", ".join(f"{t} {times[t] * 1000:.0f} ms ({outcomes[t]})" for t in files.tables))
    print(f"  pass {total * 1000:.0f} ms, cluster CPU {cpu:.2f} s during it")
    for name, waits in (("inserts alone", alone), ("inserts during the pass", during)):
        w = sorted(waits)
        print(
            f"  {name}: {len(w)} inserts, p50 {percentile(w, 50) * 1000:.1f} ms,"
            f" p99 {percentile(w, 99) * 1000:.1f} ms, max {w[-1] * 1000:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1000,10000,100000")
    parser.add_argument("--payload", type=int, default=600)
    args = parser.parse_args()
    print(code_version())
    print(machine())
    with tempfile.TemporaryDirectory(prefix="meterline-bench-") as tmp:
        dsn, stop = start_postgres(Path(tmp))
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                version = conn.execute("SHOW server_version").fetchone()
            print(f"PostgreSQL {version[0] if version else '?'}, fsync on, a cluster of its own")
            for rows in (int(n) for n in args.rows.split(",")):
                measure(dsn, Path(tmp) / "pg", rows, args.payload)
        finally:
            stop()


if __name__ == "__main__":
    main()
