"""The shared dedupe store in PostgreSQL (``ports.dedupe.DedupeStore``): a row per idempotency
key, its primary key the arbiter between API nodes.

Each call is one short statement (claim: two) in its own transaction:

1. claim — ``INSERT ... ON CONFLICT DO UPDATE ... WHERE <the row's lease lapsed, or its
   confirmation left the window>``: a new key is inserted pending under the call's token; an
   existing key is taken over only when nobody can still confirm it (its claimant's lease is
   over) or it fell out of the dedupe window. Concurrent claimants of one key queue on its
   index entry; the first commits, the others re-check the WHERE against the committed row and
   lose. Keys are inserted in sorted order so two batches sharing keys cannot deadlock.
2. the keys the insert did not return are read back: confirmed -> DUPLICATE or CONFLICT by
   digest; pending (or released in between) -> BUSY, never a duplicate: a key that is only
   claimed may still fail to be written, so reporting it as a duplicate could drop it (the flaw
   of claim-then-write dedupe that OpenMeter's issue 5118 describes).
3. confirm — ``UPDATE ... SET confirmed WHERE token = <ours> AND NOT confirmed``: a row that was
   taken over has another token and is not touched; the answer is True for the rows updated now
   and for those already confirmed under our token (idempotent, and what the sink relies on).
4. release — ``DELETE ... WHERE token = <ours> AND NOT confirmed``.

At rest (migration 18): a row is named by a keyed hash of its key (``domain.erasure.dedupe_key``:
128 bits of an HMAC-SHA256 under the erasure secret) and holds a keyed digest of its payload
digest (``dedupe_digest``), from the claim on: no event id, source, namespace or payload digest
is ever written to the table, so neither its live rows nor the dead tuple versions PostgreSQL
keeps until a ``VACUUM FULL`` hold one.

Erased keys (``adapters.postgres.erasure``): an erased key's name is the one it had (its erased
id begins with it), so an erasure only marks the row ``erased``. An erased row answers a claim
as before its erasure (confirmed: DUPLICATE or CONFLICT by the keyed digest; pending: BUSY), is
taken over only once it left the window (a lapsed lease does not free it), and is invisible to
``confirm``, ``release`` and ``confirmed_at``: an erased key answers under its erased form only.
A claim costs one HMAC per key.

Lease and window times come from the injected clock of the caller. Correctness never depends on
clocks agreeing: a claimant whose lease was taken over early only loses its confirm (and answers
a retryable error); skew can only make that more or less frequent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

import psycopg

from meterline.adapters.postgres.database import Connection, PgDatabase
from meterline.domain.erasure import dedupe_digest, dedupe_key
from meterline.domain.errors import StorageUnavailable
from meterline.ports.dedupe import Claims, EventKey, Verdict

T = TypeVar("T")
RETRIES = 5
PRUNE_BATCH = 10_000


class PgDedupe:
    def __init__(
        self,
        db: PgDatabase,
        now_us: Callable[[], int],
        *,
        lease_us: int,
        window_us: int | None = None,
        secret: Callable[[], bytes],
    ) -> None:
        """``secret``: the erasure secret, which names the keys (``meta.erasure_key``)."""
        self._db = db
        self._now_us = now_us
        self._lease_us = lease_us
        self._window_us = window_us
        self._secret = secret

    def claim(self, keys: Sequence[EventKey]) -> Claims:
        token = uuid.uuid4()
        secret = self._secret()
        names = [dedupe_key(secret, k.namespace, k.source, k.id) for k in keys]
        firsts: dict[bytes, bytes] = {}
        for name, k in zip(names, keys, strict=True):
            firsts.setdefault(name, dedupe_digest(secret, k.digest))
        now = self._now_us()
        floor = -(2**63) if self._window_us is None else now - self._window_us
        ordered = sorted(firsts)  # a fixed order of inserts: two batches sharing keys cannot deadlock
        digests = [firsts[name] for name in ordered]
        claimed, stored = self._retrying(
            lambda conn: _claim(conn, ordered, digests, token, now, floor, now + self._lease_us)
        )
        verdicts: list[Verdict] = []
        seen: set[bytes] = set()
        for name, k in zip(names, keys, strict=True):
            digest = dedupe_digest(secret, k.digest)
            if name in claimed and name not in seen:
                verdicts.append(Verdict.CLAIMED)
            elif name in claimed:  # a later occurrence of a key this call claimed
                verdicts.append(Verdict.DUPLICATE if firsts[name] == digest else Verdict.CONFLICT)
            else:
                verdicts.append(_verdict(stored.get(name), digest))
            seen.add(name)
        return Claims(token.hex, verdicts)

    def confirm(self, token: str, keys: Sequence[EventKey]) -> list[bool]:
        names = self._names(keys)
        held = self._retrying(lambda conn: _confirm(conn, sorted(set(names)), uuid.UUID(token), self._now_us()))
        return [name in held for name in names]

    def release(self, token: str, keys: Sequence[EventKey]) -> None:
        unique = sorted(set(self._names(keys)))

        def delete(conn: Connection) -> None:
            conn.execute(
                "DELETE FROM dedupe_keys WHERE key = ANY(%s::bytea[]) AND token = %s AND NOT confirmed AND NOT erased",
                (unique, uuid.UUID(token)),
            )

        self._retrying(delete)

    def confirmed_at(self, namespace: str, source: str, event_id: str) -> int | None:
        floor = -(2**63) if self._window_us is None else self._now_us() - self._window_us
        name = dedupe_key(self._secret(), namespace, source, event_id)

        def read(conn: Connection) -> int | None:
            row = conn.execute(
                "SELECT at_us FROM dedupe_keys WHERE key = %s AND confirmed AND NOT erased AND at_us >= %s",
                (name, floor),
            ).fetchone()
            return None if row is None else int(row[0])

        return self._retrying(read)

    def prune(self) -> int:
        if self._window_us is None:
            return 0
        floor, dropped = self._now_us() - self._window_us, 0
        while True:  # in bounded transactions, so a large backlog never holds long locks
            with self._db.tx() as conn:
                n = conn.execute(
                    "DELETE FROM dedupe_keys WHERE ctid = ANY(ARRAY("
                    "SELECT ctid FROM dedupe_keys WHERE at_us < %s LIMIT %s))",
                    (floor, PRUNE_BATCH),
                ).rowcount
            dropped += n
            if n < PRUNE_BATCH:
                return dropped

    def _names(self, keys: Sequence[EventKey]) -> list[bytes]:
        secret = self._secret()
        return [dedupe_key(secret, k.namespace, k.source, k.id) for k in keys]

    def _retrying(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a transaction, again when PostgreSQL chose it as a deadlock victim or
        cancelled it for a serialization failure (nothing of it was committed then)."""
        for attempt in range(RETRIES):
            try:
                with self._db.tx() as conn:
                    return work(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == RETRIES - 1:
                    raise StorageUnavailable("the dedupe store stayed contended; retry") from None
        raise AssertionError("unreachable")


def _claim(
    conn: Connection,
    ordered: list[bytes],
    digests: list[bytes],
    token: uuid.UUID,
    now: int,
    floor: int,
    lease_end: int,
) -> tuple[set[bytes], dict[bytes, tuple[bool, bytes]]]:
    # Step 1: insert new keys; take over only lapsed leases and keys that left the window (an
    # erased key: only once it left the window).
    won = conn.execute(
        "INSERT INTO dedupe_keys AS k (key, digest, token, confirmed, at_us, erased)"
        " SELECT name, dg, %(token)s, false, %(lease)s, false"
        " FROM unnest(%(name)s::bytea[], %(dg)s::bytea[]) WITH ORDINALITY AS u(name, dg, ord)"
        " ORDER BY ord"
        " ON CONFLICT (key) DO UPDATE"
        " SET digest = excluded.digest, token = excluded.token, confirmed = false, at_us = excluded.at_us,"
        " erased = false"
        " WHERE (NOT k.confirmed AND NOT k.erased AND k.at_us <= %(now)s) OR k.at_us < %(floor)s"
        " RETURNING key",
        {"token": token, "lease": lease_end, "name": ordered, "dg": digests, "now": now, "floor": floor},
    ).fetchall()
    claimed = {bytes(name) for (name,) in won}
    rest = [name for name in ordered if name not in claimed]
    if not rest:
        return claimed, {}
    # Step 2: what holds the others: a confirmation (duplicate or conflict) or a live lease (busy).
    stored = conn.execute(
        "SELECT key, confirmed, digest FROM dedupe_keys WHERE key = ANY(%s::bytea[])", (rest,)
    ).fetchall()
    return claimed, {bytes(n): (c, bytes(d)) for n, c, d in stored}


def _confirm(conn: Connection, names: list[bytes], token: uuid.UUID, now: int) -> set[bytes]:
    params = {"names": names, "token": token, "now": now}
    # Step 3: confirm what is still ours; a row taken over carries another token and stays.
    conn.execute(
        "UPDATE dedupe_keys SET confirmed = true, at_us = %(now)s"
        " WHERE key = ANY(%(names)s::bytea[]) AND token = %(token)s AND NOT confirmed AND NOT erased",
        params,
    )
    # Then read, in a statement of its own, which keys are confirmed under this token. Its
    # snapshot is newer than the UPDATE's wait: a row another confirm of the same token (the
    # node's and a sink's, at the same time) confirmed while this UPDATE waited for its lock is
    # seen as confirmed here, where one statement would have seen it neither updated nor
    # confirmed (READ COMMITTED re-checks the UPDATE's condition on the new row version, while
    # the rest of that statement keeps the old snapshot) and answered False for a held key.
    rows = conn.execute(
        "SELECT key FROM dedupe_keys"
        " WHERE key = ANY(%(names)s::bytea[]) AND token = %(token)s AND confirmed AND NOT erased",
        params,
    ).fetchall()
    return {bytes(name) for (name,) in rows}


def _verdict(row: tuple[bool, bytes] | None, digest: bytes) -> Verdict:
    if row is None or not row[0]:
        return Verdict.BUSY  # pending under another claimant, or released a moment ago: retry
    return Verdict.DUPLICATE if row[1] == digest else Verdict.CONFLICT
