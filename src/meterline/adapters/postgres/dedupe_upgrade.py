"""Migration 18: the shared dedupe store's rows named by keyed hashes instead of plaintext keys.

Before it, ``dedupe_keys`` held each key as (namespace, source, event id) with the plain payload
digest; an erasure replaced a subject's rows by erased keys, and PostgreSQL kept the old tuples
(event ids) in the table's files until a ``VACUUM FULL``. From it on, a row is named by
``domain.erasure.dedupe_key`` (128 bits of the key's HMAC under the erasure secret) and keeps
``dedupe_digest`` of the payload digest (``adapters.postgres.dedupe``).

One transaction, under the migrations' lock (``migrations.migrate``), every step keeping every
outcome:

1. ``LOCK TABLE dedupe_keys`` (ACCESS EXCLUSIVE): no claim, confirm or release of a node still
   running the older code commits while the rows are copied; each waits for this transaction
   and then fails (the table it names is gone or has other columns), so it claims nothing and
   answers a retryable error. A claim it committed before is copied with its token, so a sink
   worker of this version confirms that event when it reads it, and a retry is then a duplicate;
2. the erasure secret (``meta.erasure_key``) is read, or made as an erasure would make it;
3. the table is renamed away and a new ``dedupe_keys`` made; every row is copied under its name
   (an erased row, source ``""``: the first 128 bits of its erased id, its digest already keyed,
   marked ``erased``; any other: its keyed name and keyed digest), state, token and time kept.
   An erased row and a later claim of the same key (made once the erased row had left the
   window) get one name: the row with the later time is kept, the one a claim would answer from;
4. the old table is dropped: PostgreSQL unlinks its files (heap, primary key, time index) at
   commit, so no database file holds the plaintext keys any more. No ``VACUUM FULL`` is needed;
   what remains is what any deleted row leaves: the WAL segments not yet recycled, archived WAL
   and base backups taken before, and the file system's free blocks.

Nodes of the older code must be stopped or upgraded: they fail every dedupe call from step 1
on (and refuse to start on a schema newer than they know).
"""

from __future__ import annotations

import secrets

import psycopg
from psycopg.rows import TupleRow

from meterline.domain.erasure import ERASED_SOURCE, dedupe_digest, dedupe_key, dedupe_key_of_erased

Connection = psycopg.Connection[TupleRow]
BATCH = 10_000
SECRET_KEY = "erasure_key"
"""The ``meta`` row of the erasure secret (``adapters.postgres.erasure``)."""
TABLE = """
-- confirmed: at_us is when; pending: at_us is when the lease lapses. key: domain.erasure.dedupe_key
-- (no identifier is stored); digest: the payload digest keyed (domain.erasure.dedupe_digest);
-- erased: an erasure marked it (adapters.postgres.dedupe). The primary key is what lets exactly
-- one claimant hold a key (ports.dedupe, docs/scale.md).
CREATE TABLE dedupe_keys (
    key BYTEA PRIMARY KEY, digest BYTEA NOT NULL, token UUID NOT NULL, confirmed BOOLEAN NOT NULL,
    at_us BIGINT NOT NULL, erased BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX dedupe_keys_by_time ON dedupe_keys (at_us);
"""


def secret_in(conn: Connection) -> bytes:
    """The deployment's erasure secret, made in the caller's transaction if there is none yet."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
        (SECRET_KEY, secrets.token_hex(32)),
    )
    row = conn.execute("SELECT value FROM meta WHERE key = %s", (SECRET_KEY,)).fetchone()
    assert row is not None
    return bytes.fromhex(str(row[0]))


def hash_dedupe_keys(conn: Connection) -> None:
    """Migration 18 (the module's steps), in the caller's transaction."""
    conn.execute("LOCK TABLE dedupe_keys IN ACCESS EXCLUSIVE MODE")
    secret = secret_in(conn)
    conn.execute("ALTER TABLE dedupe_keys RENAME TO dedupe_keys_plaintext")
    conn.execute("ALTER INDEX dedupe_keys_pkey RENAME TO dedupe_keys_plaintext_pkey")
    conn.execute("ALTER INDEX dedupe_keys_by_time RENAME TO dedupe_keys_plaintext_by_time")
    conn.execute(TABLE.encode())
    conn.execute(
        "CREATE TEMP TABLE dedupe_keys_hashed (key BYTEA, digest BYTEA, token UUID, confirmed BOOLEAN,"
        " at_us BIGINT, erased BOOLEAN) ON COMMIT DROP"
    )
    with conn.cursor(name="dedupe_keys_upgrade") as rows:
        rows.execute("SELECT namespace, source, id, digest, token, confirmed, at_us FROM dedupe_keys_plaintext")
        while batch := rows.fetchmany(BATCH):
            with conn.cursor().copy("COPY dedupe_keys_hashed FROM STDIN") as copy:
                for ns, source, id_, digest, token, confirmed, at_us in batch:
                    if source == ERASED_SOURCE:
                        copy.write_row((dedupe_key_of_erased(id_), digest, token, confirmed, at_us, True))
                    else:
                        name = dedupe_key(secret, ns, source, id_)
                        copy.write_row((name, dedupe_digest(secret, bytes(digest)), token, confirmed, at_us, False))
    conn.execute(
        "INSERT INTO dedupe_keys (key, digest, token, confirmed, at_us, erased)"
        " SELECT DISTINCT ON (key) key, digest, token, confirmed, at_us, erased FROM dedupe_keys_hashed"
        " ORDER BY key, at_us DESC, confirmed DESC"
    )
    conn.execute("DROP TABLE dedupe_keys_plaintext")
