"""What PostgreSQL's WAL keeps of a row an erasure removed (docs/erasure.md, "PostgreSQL's files").

    ./run bench pg_wal_segments [--switches 4]

Not a speed measurement: a check of where the bytes are, for each of ``wal_recycle = on`` (the
default) and ``off``. Starts a PostgreSQL cluster of its own (initdb as the postgres user, the
default WAL settings but the one named) on a free 127.0.0.1 port, inserts a row with a unique
marker, deletes it and rewrites the table (``VACUUM FULL``, as an erasure's step 9 does), then
``SELECT pg_switch_wal(); CHECKPOINT`` ``--switches`` times. After each step it prints the
current segment, the files of ``pg_wal/`` and which of them hold the marker (and whether
``base/`` does). Stops the cluster at the end.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

import psycopg
from _common import machine
from dedupe_store import start_postgres


def holding(root: Path, marker: bytes) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and marker in p.read_bytes())


def look(conn: psycopg.Connection[tuple[object, ...]], data: Path, marker: bytes, step: str) -> None:
    row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    segments = sorted(p.name for p in (data / "pg_wal").iterdir() if p.is_file())
    print(
        f"  {step}: current {row[0] if row else '?'}; pg_wal/ {' '.join(segments)};"
        f" marker in pg_wal/: {' '.join(holding(data / 'pg_wal', marker)) or 'none'};"
        f" in base/: {'yes' if holding(data / 'base', marker) else 'no'}"
    )


def run(recycle: str, switches: int) -> None:
    with tempfile.TemporaryDirectory(prefix="meterline-wal-") as tmp:
        dsn, stop = start_postgres(Path(tmp), f"-c wal_recycle={recycle}")
        data = Path(tmp) / "pg"
        marker = f"marker-{uuid.uuid4().hex}"
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                names = "wal_recycle', 'min_wal_size', 'max_wal_size', 'wal_keep_size', 'archive_mode"
                settings = conn.execute(
                    f"SELECT string_agg(name || ' = ' || setting || coalesce(unit, ''), ', ')"
                    f" FROM pg_settings WHERE name IN ('{names}')"
                ).fetchone()
                version = conn.execute("SHOW server_version").fetchone()
                print(f"\nPostgreSQL {version[0] if version else '?'}: {settings[0] if settings else '?'}")
                conn.execute("CREATE TABLE erased (id text PRIMARY KEY, raw bytea)")
                conn.execute("INSERT INTO erased VALUES (%s, convert_to(%s, 'UTF8'))", (marker, f"payload {marker}"))
                conn.execute("DELETE FROM erased")
                conn.execute("VACUUM FULL erased")
                conn.execute("CHECKPOINT")
                look(conn, data, marker.encode(), "inserted, deleted, VACUUM FULL, CHECKPOINT")
                for n in range(1, switches + 1):
                    conn.execute("SELECT pg_switch_wal()")
                    conn.execute("CHECKPOINT")
                    look(conn, data, marker.encode(), f"switch + checkpoint {n}")
        finally:
            stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--switches", type=int, default=4)
    args = parser.parse_args()
    print(machine())
    for recycle in ("on", "off"):
        run(recycle, args.switches)


if __name__ == "__main__":
    main()
