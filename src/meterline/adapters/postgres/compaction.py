"""The catalog's files rewritten after a scale-mode erasure (``ports.erasure.CatalogFiles``).

PostgreSQL deletes and updates rows by leaving the old tuple versions in the table's and its
indexes' files; a plain ``VACUUM`` (and autovacuum) marks their space free without writing over
it. ``VACUUM (FULL, ANALYZE)`` writes the table and its indexes anew from the live rows and
drops the old files, so what the erasure deleted or replaced there is gone from ``base/``
(docs/erasure.md, "PostgreSQL's files"); its ``ANALYZE`` replaces the table's statistics, whose
most common values and histogram bounds are samples of the rows (a subject can be one of
them). ``pg_statistic`` itself is then rewritten the same way, as the statistics it replaced
were left there as dead tuples.

Guarantees and limits of one ``rewrite``:

- it holds an ``ACCESS EXCLUSIVE`` lock on the table while it copies it: every read and write
  of that table waits meanwhile. The tables here are the catalog's small ones (never
  ``dedupe_keys``, the ingest path's, which holds keyed hashes only: nothing of a subject is
  in its files to remove). ``lock_timeout`` bounds how long the request waits for
  the lock (and so how long the requests queued behind it wait): ``busy`` when it is not
  granted in time;
- a dead row version that a transaction still open may see is copied, not dropped
  (``VACUUM FULL`` keeps what is "recently dead"): ``VERBOSE`` says how many, and any is
  ``held`` (the bytes are still there; a later attempt, once that transaction ended, drops them);
- one node at a time: a session advisory lock (per schema), so two nodes finishing erasures do
  not queue two rewrites of the same tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from meterline.adapters.postgres.database import Connection
from meterline.domain.errors import StorageUnavailable

TABLES = (
    "quarantine",
    "dead_letters",
    "portal_tokens",
    "customer_subjects",
    "customers",
    "entitlements",
    "subscriptions",
    "event_corrections",
    "erasures",
)
"""The tables an erasure deletes or rewrites rows of that may name the subject or hold its events'
ids or payloads (``adapters.postgres.erasure``; entitlements and subscriptions carry a customer
key that was the subject, ``adapters.postgres.rekey``). ``erasures``: its unfinished row kept the
subject (every update of it left a version holding it) until the erasure finished."""
STATISTICS = "pg_statistic"
_CLASS = 0x6D63_6F6D  # "mcom"
_KEPT = re.compile(r"(\d+) dead row versions cannot be removed yet")


class PgCatalogFiles:
    """``ports.erasure.CatalogFiles`` over the schema of ``dsn``."""

    tables: tuple[str, ...] = (*TABLES, STATISTICS)
    """In order: the rewrites' ``ANALYZE`` come before the statistics are rewritten."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn

    @contextmanager
    def rewriting(self) -> Iterator[PgRewriter | None]:
        """A connection of its own holding the rewrite lock for the block (None: another
        process holds it)."""
        try:
            conn = psycopg.connect(self._dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StorageUnavailable("the PostgreSQL database is unavailable") from exc
        with conn:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))", (_CLASS,)).fetchone()
            if not (got and got[0]):
                yield None
                return
            try:
                yield PgRewriter(conn)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", (_CLASS,))


class PgRewriter:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._notices: list[str] = []
        conn.add_notice_handler(lambda d: self._notices.append(f"{d.message_primary or ''} {d.message_detail or ''}"))

    def rewrite(self, table: str, lock_timeout: float) -> str:
        """``rewritten``; ``busy`` (the lock not
        granted within ``lock_timeout`` seconds); ``held`` (dead row versions still visible to
        an open transaction were copied); ``failed: ...`` (refused, e.g. not the owner).
        Raises ``StorageUnavailable`` when the database cannot be reached."""
        self._notices.clear()
        if table == STATISTICS:
            statement = sql.SQL("VACUUM (FULL, VERBOSE) {}").format(sql.Identifier("pg_catalog", table))
        else:
            statement = sql.SQL("VACUUM (FULL, ANALYZE, VERBOSE) {}").format(sql.Identifier(table))
        try:
            wait = sql.Literal(f"{max(int(lock_timeout * 1000), 1)}ms")
            self._conn.execute(sql.SQL("SET lock_timeout = {}").format(wait))
            self._conn.execute(statement)
        except psycopg.errors.LockNotAvailable:
            return "busy"
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StorageUnavailable("the PostgreSQL database is unavailable") from exc
        except psycopg.Error as exc:
            return f"failed: {exc.sqlstate} {exc.diag.message_primary or type(exc).__name__}"
        finally:
            try:
                self._conn.execute("RESET lock_timeout")
            except psycopg.Error:
                pass
        kept = sum(int(m.group(1)) for n in self._notices if (m := _KEPT.search(n)))
        return "held" if kept else "rewritten"
