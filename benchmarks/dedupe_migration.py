"""The one-time conversion of a plaintext PostgreSQL dedupe store to keyed names (migration 18).

    python benchmarks/dedupe_migration.py [--rows 1000000]

Starts a throwaway PostgreSQL cluster (as ``dedupe_store.py``), makes the schema of the version
before (migrations 1-17) and fills ``dedupe_keys`` with ``--rows`` confirmed keys (UUIDv4-like
ids, 16-byte digests, as API nodes write them), then opens the database with this version,
which applies migration 18, and prints how long the table was held (the migration's
transaction: claims wait that long), the CPU of the migrating process and of the server, and
the table's size (heap and indexes) before and after.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psycopg
from _common import code_version, machine
from dedupe_store import postmaster_pid, server_cpu, start_postgres

from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.migrations import MIGRATIONS


def size(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_total_relation_size('dedupe_keys')").fetchone()
    assert row is not None
    return int(row[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    print(f"# {machine()}\n# code: {code_version()}\n# {args.rows} plaintext keys")
    with tempfile.TemporaryDirectory() as tmp:
        dsn, stop = start_postgres(Path(tmp))
        try:
            with psycopg.connect(dsn) as conn:
                conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
                for version, name, sql in MIGRATIONS[:17]:
                    assert isinstance(sql, str)
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, name))
                conn.execute(
                    "INSERT INTO dedupe_keys SELECT 'default', 'bench', gen_random_uuid()::text,"
                    " substr(sha256(i::text::bytea), 1, 16), gen_random_uuid(), true, 1772366400000000 + i"
                    " FROM generate_series(1, %s) AS i",
                    (args.rows,),
                )
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE dedupe_keys")
            before = size(dsn)
            pid = postmaster_pid(Path(tmp))
            cpu0, server0, t0 = time.process_time(), server_cpu([pid]), time.perf_counter()
            PgDatabase(dsn, max_size=1).close()  # applies migration 18
            held = time.perf_counter() - t0
            cpu, server = time.process_time() - cpu0, server_cpu([pid]) - server0
            after = size(dsn)
        finally:
            stop()
    per = 1e6 / args.rows
    print(f"migration 18: {held:.1f} s ({held * per:.1f} s per million keys)")
    print(f"  CPU: migrating process {cpu:.1f} s, server {server:.1f} s")
    print(f"  dedupe_keys with its indexes: {before / 2**20:.0f} MB before, {after / 2**20:.0f} MB after")


if __name__ == "__main__":
    main()
