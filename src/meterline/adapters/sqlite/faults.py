"""Storage faults: what a failed COMMIT can leave behind, and how it is kept refused.

In WAL mode a COMMIT (1) writes the transaction's pages as frames at the end of the log, the
last one marked as a commit, (2) syncs the log (``synchronous=FULL``: ``fdatasync``), and only
then (3) publishes the new end of the log in the shared WAL index. When (2) fails, SQLite
reports the error and the transaction is not visible, but its frames are in the file with
valid checksums. Nothing in this process will read them; yet after a crash, recovery rebuilds
the index by scanning the log and *would* take them as committed: a write answered "not
recorded" would appear after a restart (the fsync-failure trap). The same holds when the
store fails after the frames were written for any other reason.

The next transaction that commits writes its frames from the published end, over the stray
ones: recovery then stops at the first stray frame, whose checksum no longer chains. So after
a failed COMMIT the writer (see ``writer.py``):

1. opens a fresh connection (before closing the old one, so the shared index is not rebuilt
   from the log in the meantime) and drops the old one, whose state is no longer trusted;
2. commits a one-row *heal* transaction (a counter in ``meta``) on it before answering
   anyone. If its frames were written, the stray ones are overwritten, even if its own sync
   fails again (a stray heal is harmless: it changes nothing but the counter);
3. if the heal could not even be written and the failed COMMIT may have left a whole
   transaction in the log, stops the process rather than answer "not recorded" (as
   PostgreSQL does on a failed fsync): the callers see a dropped connection, and retrying is
   safe because ingest is idempotent.
"""

from __future__ import annotations

import sqlite3

_IO_CLASSES = {
    10,  # SQLITE_IOERR (all of its extended codes)
    11,  # SQLITE_CORRUPT
    13,  # SQLITE_FULL
    14,  # SQLITE_CANTOPEN
    15,  # SQLITE_PROTOCOL
    26,  # SQLITE_NOTADB
}
_SYNC_FAILED = {
    1034,  # SQLITE_IOERR_FSYNC: every frame was written, the sync failed
    1290,  # SQLITE_IOERR_DIR_FSYNC
}
_NOTHING_WHOLE_WRITTEN = {
    13,  # SQLITE_FULL: a write ran out of space, the commit frame was not written
    778,  # SQLITE_IOERR_WRITE: a write failed; the commit frame is last and did not land whole
}


def code(exc: BaseException) -> int:
    """SQLite's extended result code of ``exc`` (0 when it is not an SQLite error)."""
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) if isinstance(exc, sqlite3.Error) else 0


def name(exc: BaseException) -> str:
    """SQLite's name for the error (``SQLITE_IOERR_FSYNC``), or the exception's class name."""
    if isinstance(exc, sqlite3.Error):
        return str(getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR")
    return type(exc).__name__


def describe(exc: BaseException) -> str:
    """A one-line description for the log: the name and SQLite's message."""
    return f"{name(exc)}: {exc}"


def io_failure(exc: BaseException) -> bool:
    """The storage itself failed (I/O, full disk, corruption), not the SQL of a task."""
    return code(exc) & 0xFF in _IO_CLASSES


def may_leave_commit(exc: BaseException) -> bool:
    """Whether a COMMIT that failed with ``exc`` may have left a whole transaction in the log."""
    c = code(exc)
    return c not in _NOTHING_WHOLE_WRITTEN and c & 0xFF != 13


def heal(conn: sqlite3.Connection) -> None:
    """Commit a transaction that changes nothing but a counter (step 2 above). Raises on failure."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO meta VALUES ('storage_heals', '1')"
            " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is open, if the connection still can; a failure here changes nothing
    (the caller drops or re-checks the connection next)."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def healed(exc: BaseException | None) -> bool:
    """Whether a heal that ended with ``exc`` (None: it committed) wrote its frames."""
    return exc is None or code(exc) in _SYNC_FAILED
