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
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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
