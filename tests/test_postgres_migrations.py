"""PostgreSQL migrations: applied at start, once, also when several processes start together;
a database newer than the code is refused."""

from __future__ import annotations

import threading

import psycopg
import pytest
from postgres_server import fresh_schema, server

from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.migrations import MIGRATIONS
from meterline.domain.errors import ConfigError

VERSIONS = [v for v, _, _ in MIGRATIONS]


def applied(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def test_nodes_starting_together_apply_each_migration_once() -> None:
    with fresh_schema(server()) as dsn:
        opened: list[PgDatabase | BaseException] = []
        start = threading.Barrier(6)

        def node() -> None:
            start.wait()
            try:
                opened.append(PgDatabase(dsn, max_size=1))
            except BaseException as exc:
                opened.append(exc)

        threads = [threading.Thread(target=node) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert all(isinstance(db, PgDatabase) for db in opened), opened
            assert applied(dsn) == VERSIONS
            PgDatabase(dsn, max_size=1).close()  # a restart applies nothing
            assert applied(dsn) == VERSIONS
        finally:
            for db in opened:
                if isinstance(db, PgDatabase):
                    db.close()


def test_a_database_newer_than_the_code_is_refused() -> None:
    with fresh_schema(server()) as dsn:
        PgDatabase(dsn, max_size=1).close()
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, 'from the future')", (999,))
        with pytest.raises(ConfigError) as err:
            PgDatabase(dsn, max_size=1)
        assert "999" in str(err.value) and "upgrade meterline" in str(err.value)
