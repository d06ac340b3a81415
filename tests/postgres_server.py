"""The machine's PostgreSQL for tests: started when it is not running, one fresh schema per use.

``METERLINE_TEST_POSTGRES`` overrides the server (a libpq connection string); by default the
local server on 127.0.0.1:5432 (trust auth), database ``test``. Each store a test opens lives in
a schema of its own (``search_path`` set in the DSN) that is dropped afterwards, so tests and
parallel pytest-xdist workers never see each other's rows.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

DEFAULT = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=5"
ADMIN = "host=127.0.0.1 port=5432 dbname=postgres user=postgres connect_timeout=5"


@functools.cache
def server() -> str:
    """The base DSN of a running server, starting the machine's cluster first if needed."""
    dsn = os.environ.get("METERLINE_TEST_POSTGRES", DEFAULT)
    if _reachable(dsn):
        return dsn
    if "METERLINE_TEST_POSTGRES" not in os.environ and _reachable(ADMIN):
        try:
            with psycopg.connect(ADMIN, autocommit=True) as conn:  # a server without the test database
                conn.execute("CREATE DATABASE test")
        except psycopg.errors.DuplicateDatabase:
            pass  # another test worker made it first
        return dsn
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        raise RuntimeError(f"PostgreSQL is not reachable at {dsn!r} and no local cluster is installed to start")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "start"],
        check=False,
        capture_output=True,
    )
    deadline = time.monotonic() + 30
    while not _reachable(dsn) and not _reachable(ADMIN):
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not come up at {dsn!r}")
        time.sleep(0.2)
    return server.__wrapped__()  # up now: check again (and make the test database if it lacks one)


@contextmanager
def fresh_schema(base: str) -> Iterator[str]:
    """A DSN whose tables land in a new, empty schema; the schema is dropped on exit."""
    schema = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    try:
        yield make_conninfo(base, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())


def _reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def server_binaries() -> Path:
    """The directory of this machine's PostgreSQL server programs (``initdb``, ``pg_ctl``):
    ``METERLINE_TEST_PG_BIN``, else where ``initdb`` is on the PATH, else the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian's layout, not on the PATH)."""
    if os.environ.get("METERLINE_TEST_PG_BIN"):
        return Path(os.environ["METERLINE_TEST_PG_BIN"])
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    debian.sort(key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])
    if not debian:
        raise RuntimeError("no PostgreSQL server programs (initdb, pg_ctl) found: set METERLINE_TEST_PG_BIN")
    return debian[-1]


@dataclass(frozen=True)
class Cluster:
    """A private PostgreSQL cluster: its data directory (``base/`` holds the tables' files,
    ``pg_wal/`` the WAL) and a DSN of its ``meterline`` database (superuser ``postgres``)."""

    data: Path
    dsn: str


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb refuses to run as root: the server programs then run as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def private_cluster(options: str = "") -> Iterator[Cluster]:
    """A throwaway cluster on a free 127.0.0.1 port (fsync off, trust auth, ``options`` added to
    the server's command line), stopped and removed on exit. Its directory is made under the
    system temp dir, which the ``postgres`` user can reach when the tests run as root."""
    bin_dir = server_binaries()
    data = Path(tempfile.mkdtemp(prefix="meterline-pgfiles-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = functools.partial(subprocess.run, check=True, capture_output=True, timeout=120)
    try:
        run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "--no-sync", "-U", "postgres"]))
        server_options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off {options}"
        log = str(data / "server.log")
        run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", log, "-o", server_options, "start"]))
        base = f"host=127.0.0.1 port={port} user=postgres connect_timeout=5"
        with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE meterline")
        yield Cluster(data, f"{base} dbname=meterline")
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            check=False,
            timeout=120,
        )
        shutil.rmtree(data, ignore_errors=True)


def files_holding(root: Path, words: list[str]) -> dict[str, list[str]]:
    """Per word, the files under ``root`` whose raw bytes hold it (relative paths)."""
    found: dict[str, list[str]] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                data = path.read_bytes()
            except OSError:  # removed meanwhile (a relation file dropped at a checkpoint)
                continue
            for word in words:
                if word.encode() in data:
                    found.setdefault(word, []).append(str(path.relative_to(root)))
    return found
