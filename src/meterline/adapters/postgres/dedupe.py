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

Erased keys (``adapters.postgres.erasure``): an erasure replaces a key's row by its erased key
(source ``""``, id = HMAC of the key under the erasure secret). Step 1 inserts no key whose
erased key has a row (within the window), and step 2 reads those rows too: a resent erased
event is DUPLICATE (or CONFLICT, told by the keyed digest), never claimed again. It costs one
HMAC per key and one more probe of the primary key per inserted key.

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
from meterline.domain.erasure import ERASED_SOURCE, erased_digest, erased_id
from meterline.domain.errors import StorageUnavailable
from meterline.ports.dedupe import Claims, EventKey, Verdict

T = TypeVar("T")
Key = tuple[str, str, str]
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
        secret: Callable[[], bytes] | None = None,
    ) -> None:
        """``secret``: the erasure secret (erased keys are recognised; None: they are not)."""
        self._db = db
        self._now_us = now_us
        self._lease_us = lease_us
        self._window_us = window_us
        self._secret = secret

    def claim(self, keys: Sequence[EventKey]) -> Claims:
        token = uuid.uuid4()
        firsts: dict[Key, EventKey] = {}
        for k in keys:
            firsts.setdefault((k.namespace, k.source, k.id), k)
        now = self._now_us()
        floor = -(2**63) if self._window_us is None else now - self._window_us
        ordered = sorted(firsts)
        secret = None if self._secret is None else self._secret()
        erased = {key: erased_id(secret, *key) for key in ordered} if secret is not None else {}
        rows = self._retrying(
            lambda conn: _claim(conn, ordered, firsts, token, now, floor, now + self._lease_us, erased)
        )
        claimed, stored = rows
        verdicts: list[Verdict] = []
        seen: set[Key] = set()
        for k in keys:
            key = (k.namespace, k.source, k.id)
            if key in claimed and key not in seen:
                verdicts.append(Verdict.CLAIMED)
            elif key in claimed:  # a later occurrence of a key this call claimed
                verdicts.append(Verdict.DUPLICATE if firsts[key].digest == k.digest else Verdict.CONFLICT)
            elif key in stored:
                verdicts.append(_verdict(stored[key], k.digest))
            else:  # an erased key's row, or none (BUSY)
                digest = k.digest if secret is None else erased_digest(secret, k.digest)
                verdicts.append(_verdict(stored.get((k.namespace, ERASED_SOURCE, erased.get(key, ""))), digest))
            seen.add(key)
        return Claims(token.hex, verdicts)

    def confirm(self, token: str, keys: Sequence[EventKey]) -> list[bool]:
        unique = sorted({(k.namespace, k.source, k.id) for k in keys})
        held = self._retrying(lambda conn: _confirm(conn, unique, uuid.UUID(token), self._now_us()))
        return [(k.namespace, k.source, k.id) in held for k in keys]

    def release(self, token: str, keys: Sequence[EventKey]) -> None:
        unique = sorted({(k.namespace, k.source, k.id) for k in keys})
        ns, src, ids = _columns(unique)

        def delete(conn: Connection) -> None:
            conn.execute(
                "DELETE FROM dedupe_keys k USING unnest(%s::text[], %s::text[], %s::text[]) AS u(ns, src, id)"
                " WHERE k.namespace = u.ns AND k.source = u.src AND k.id = u.id AND k.token = %s AND NOT k.confirmed",
                (ns, src, ids, uuid.UUID(token)),
            )

        self._retrying(delete)

    def confirmed_at(self, namespace: str, source: str, event_id: str) -> int | None:
        floor = -(2**63) if self._window_us is None else self._now_us() - self._window_us

        def read(conn: Connection) -> int | None:
            row = conn.execute(
                "SELECT at_us FROM dedupe_keys WHERE namespace = %s AND source = %s AND id = %s"
                " AND confirmed AND at_us >= %s",
                (namespace, source, event_id, floor),
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
    ordered: list[Key],
    firsts: dict[Key, EventKey],
    token: uuid.UUID,
    now: int,
    floor: int,
    lease_end: int,
    erased: dict[Key, str],
) -> tuple[set[Key], dict[Key, tuple[bool, bytes]]]:
    ns, src, ids = _columns(ordered)
    digests = [firsts[key].digest for key in ordered]
    eids = [erased.get(key, "") for key in ordered]
    # Step 1: insert new keys (none whose erased key is held); take over only lapsed leases and
    # keys that left the window.
    won = conn.execute(
        "INSERT INTO dedupe_keys AS k (namespace, source, id, digest, token, confirmed, at_us)"
        " SELECT ns, src, id, dg, %(token)s, false, %(lease)s"
        " FROM unnest(%(ns)s::text[], %(src)s::text[], %(id)s::text[], %(dg)s::bytea[], %(eid)s::text[])"
        " WITH ORDINALITY AS u(ns, src, id, dg, eid, ord)"
        " WHERE u.eid = '' OR NOT EXISTS (SELECT 1 FROM dedupe_keys e"
        " WHERE e.namespace = u.ns AND e.source = '' AND e.id = u.eid AND e.at_us >= %(floor)s)"
        " ORDER BY ord"
        " ON CONFLICT (namespace, source, id) DO UPDATE"
        " SET digest = excluded.digest, token = excluded.token, confirmed = false, at_us = excluded.at_us"
        " WHERE (NOT k.confirmed AND k.at_us <= %(now)s) OR (k.confirmed AND k.at_us < %(floor)s)"
        " RETURNING namespace, source, id",
        {
            "token": token,
            "lease": lease_end,
            "ns": ns,
            "src": src,
            "id": ids,
            "dg": digests,
            "now": now,
            "floor": floor,
            "eid": eids,
        },
    ).fetchall()
    claimed = {(n, s, i) for n, s, i in won}
    rest = [key for key in ordered if key not in claimed]
    if not rest:
        return claimed, {}
    # Step 2: what holds the others: a confirmation (duplicate or conflict) or a live lease
    # (busy); an erased key's row stands for its original key's.
    rest += [(key[0], ERASED_SOURCE, erased[key]) for key in rest if erased.get(key)]
    ns, src, ids = _columns(rest)
    stored = conn.execute(
        "SELECT k.namespace, k.source, k.id, k.confirmed, k.digest FROM dedupe_keys k"
        " JOIN unnest(%s::text[], %s::text[], %s::text[]) AS u(ns, src, id)"
        " ON k.namespace = u.ns AND k.source = u.src AND k.id = u.id",
        (ns, src, ids),
    ).fetchall()
    return claimed, {(n, s, i): (c, d) for n, s, i, c, d in stored}


def _confirm(conn: Connection, keys: list[Key], token: uuid.UUID, now: int) -> set[Key]:
    ns, src, ids = _columns(keys)
    params = {"ns": ns, "src": src, "id": ids, "token": token, "now": now}
    unnest = "unnest(%(ns)s::text[], %(src)s::text[], %(id)s::text[]) AS u(ns, src, id)"
    # Step 3: confirm what is still ours; a row taken over carries another token and stays.
    conn.execute(
        f"UPDATE dedupe_keys k SET confirmed = true, at_us = %(now)s FROM {unnest}"
        " WHERE k.namespace = u.ns AND k.source = u.src AND k.id = u.id AND k.token = %(token)s AND NOT k.confirmed",
        params,
    )
    # Then read, in a statement of its own, which keys are confirmed under this token. Its
    # snapshot is newer than the UPDATE's wait: a row another confirm of the same token (the
    # node's and a sink's, at the same time) confirmed while this UPDATE waited for its lock is
    # seen as confirmed here, where one statement would have seen it neither updated nor
    # confirmed (READ COMMITTED re-checks the UPDATE's condition on the new row version, while
    # the rest of that statement keeps the old snapshot) and answered False for a held key.
    rows = conn.execute(
        f"SELECT k.namespace, k.source, k.id FROM dedupe_keys k JOIN {unnest}"
        " ON k.namespace = u.ns AND k.source = u.src AND k.id = u.id WHERE k.token = %(token)s AND k.confirmed",
        params,
    ).fetchall()
    return {(n, s, i) for n, s, i in rows}


def _verdict(row: tuple[bool, bytes] | None, digest: bytes) -> Verdict:
    if row is None or not row[0]:
        return Verdict.BUSY  # pending under another claimant, or released a moment ago: retry
    return Verdict.DUPLICATE if row[1] == digest else Verdict.CONFLICT


def _columns(keys: Sequence[Key]) -> tuple[list[str], list[str], list[str]]:
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
