"""The catalog's side of a scale-mode erasure in PostgreSQL (``ports.erasure.ErasureCatalog``)
and the erased entries the sink workers consult (``ports.erasure.ErasedEntries``).

- the erasure secret is ``meta.erasure_key``: the first node that needs it inserts a random
  one, every other node reads that one (``INSERT ... ON CONFLICT DO NOTHING`` then ``SELECT``);
- ``begin`` is one transaction: the audit row (``erasures``, unfinished), the erased entries
  (``erased_entries``, by log place), each of the subject's idempotency keys in
  ``dedupe_keys`` marked erased (its row holds only keyed hashes: a resend is still answered
  duplicate by ``adapters.postgres.dedupe``, a correction no longer takes it for an accepted
  event), the correction
  journal's rows of those keys rewritten (erased key, pseudonym, erased payload, reason
  replaced), and the subject's quarantined events, dead letters and portal tokens deleted;
- ``switch`` moves the customers' subject mappings (and a customer key equal to the subject)
  to the pseudonym, in one transaction;
- ``reached`` records each later step done with its counts, in one transaction each;
- ``finish`` adds the last counts and marks the record finished, with its tables due to be
  rewritten (``rewrite_due``, migration 17: ``VACUUM FULL``, ``adapters.postgres.compaction``);
  ``rewritten`` records how that went, and clears it once every table is rewritten.

From ``begin`` until ``finish`` the record keeps the subject (``erasures.subject``, migration
14: what a resumed run needs; set to NULL when it finishes) and holds every sink worker off
(``adapters.postgres.fence`` gives no epoch while such a record exists), so nothing moves in the
usage store between a crash and the run that finishes the erasure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from meterline.adapters.postgres.database import Connection, PgDatabase, lock
from meterline.adapters.postgres.dedupe_upgrade import secret_in
from meterline.adapters.postgres.rekey import rekey_references
from meterline.domain.erasure import (
    ERASED_REASON,
    ERASED_SOURCE,
    ErasureRecord,
    ErasureRequest,
    dedupe_key,
    dedupe_key_of_erased,
    names,
)
from meterline.ports.erasure import ErasedEntry, ErasedKey, Step, UnfinishedErasure

_RECORD = (
    "id, namespace, erased_us, actor, reason, pseudonym, counts, through, log_kept_ms, redis_files, postgres_files"
)
_ENTRY = "stream, seq, namespace, type, subject, time_us, received_us, id, raw, corrects, kept"


class PgErasureCatalog:
    def __init__(self, db: PgDatabase, now_us: Callable[[], int]) -> None:
        self._db = db
        self._now_us = now_us
        self._secret: bytes | None = None

    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = erasure_secret(self._db)
        return self._secret

    def meter_keys(self, namespace: str) -> list[int]:
        with self._db.tx() as conn:
            return [int(k) for (k,) in conn.execute("SELECT key FROM meters WHERE namespace = %s", (namespace,))]

    def refers(self, namespace: str, subject: str) -> bool:
        with self._db.tx() as conn:
            for table in ("customer_subjects", "quarantine", "portal_tokens"):
                sql = f"SELECT 1 FROM {table} WHERE namespace = %s AND subject = %s LIMIT 1"
                if conn.execute(sql, (namespace, subject)).fetchone():
                    return True
            if conn.execute(
                "SELECT 1 FROM customers WHERE namespace = %s AND key = %s LIMIT 1", (namespace, subject)
            ).fetchone():
                return True
            return bool(_dead_letters(conn, namespace, subject))

    def held_keys(self, namespace: str, subject: str) -> list[tuple[str, str]]:
        with self._db.tx() as conn:
            return _held_keys(conn, namespace, subject)

    def begin(
        self,
        request: ErasureRequest,
        alias: str,
        through: Mapping[int, int],
        entries: Sequence[ErasedEntry],
        keys: Sequence[ErasedKey],
        log_kept_ms: int | None = None,
    ) -> ErasureRecord:
        ns = request.namespace
        with self._db.tx() as conn:
            lock(conn, "erasure", ns, alias)  # two erasures of one subject: one after the other
            record = self._open(conn, request, alias, through, log_kept_ms)
            conn.cursor().executemany(
                "INSERT INTO erased_entries VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                [
                    (e.stream, e.seq, e.namespace, record.id, e.type, e.subject, e.time_us, e.received_us, e.id,
                     e.raw, e.corrects, e.kept)
                    for e in entries
                ],
            )  # fmt: skip
            counts = {"ledgerEntries": len(entries), "events": len({(e.namespace, e.id) for e in entries})}
            counts["dedupeKeys"] = self._dedupe(conn, ns, keys) + self._forget_held(conn, ns, request.subject, keys)
            counts["corrections"] = self._journal(conn, ns, request.subject, alias, entries, keys)
            counts |= _delete_held(conn, ns, request.subject)
            return self._add(conn, record, counts, finished=False)

    def switch(self, record: ErasureRecord, subject: str) -> dict[str, int]:
        ns, alias = record.namespace, record.pseudonym
        with self._db.tx() as conn:
            mapped = conn.execute(
                "SELECT customer FROM customer_subjects WHERE namespace = %s AND subject = %s", (ns, subject)
            ).fetchall()
            conn.execute(
                "INSERT INTO customer_subjects SELECT namespace, %s, customer FROM customer_subjects"
                " WHERE namespace = %s AND subject = %s ON CONFLICT DO NOTHING",
                (alias, ns, subject),
            )
            conn.execute("DELETE FROM customer_subjects WHERE namespace = %s AND subject = %s", (ns, subject))
            kept = 0  # the subject keys deleted customers are kept with (adapters.postgres.customers)
            for cid, stored in conn.execute(
                "SELECT id, deleted_subjects FROM customers WHERE namespace = %s AND deleted_subjects IS NOT NULL",
                (ns,),
            ).fetchall():
                had = msgspec.json.decode(stored)
                if subject in had:
                    renamed = sorted({alias if s == subject else s for s in had})
                    conn.execute(
                        "UPDATE customers SET deleted_subjects = %s WHERE id = %s", (msgspec.json.encode(renamed), cid)
                    )
                    kept += 1
            keys = 0
            for (cid,) in conn.execute(
                "SELECT id FROM customers WHERE namespace = %s AND key = %s", (ns, subject)
            ).fetchall():
                taken = conn.execute(
                    "SELECT 1 FROM customers WHERE namespace = %s AND key = %s AND deleted_us IS NULL", (ns, alias)
                ).fetchone()
                new_key = f"{alias}.{cid}" if taken else alias
                conn.execute("UPDATE customers SET key = %s WHERE id = %s", (new_key, cid))
                rekey_references(conn, cid, new_key)  # its entitlements and subscriptions carry the key
                keys += 1
            return {"customerMappings": len(mapped) + kept, "customerKeys": keys}

    def reached(self, record: ErasureRecord, step: Step, counts: Mapping[str, int]) -> ErasureRecord:
        with self._db.tx() as conn:
            conn.execute("UPDATE erasures SET step = GREATEST(step, %s) WHERE id = %s", (int(step), record.id))
            return self._add(conn, record, counts, finished=False)

    def finish(
        self, record: ErasureRecord, counts: Mapping[str, int], files: Mapping[str, str] | None = None
    ) -> ErasureRecord:
        with self._db.tx() as conn:
            if files is not None:
                conn.execute(
                    "UPDATE erasures SET redis_files = %s WHERE id = %s", (msgspec.json.encode(dict(files)), record.id)
                )
                record = dataclasses.replace(record, redis_files=dict(files))
            return self._add(conn, record, counts, finished=True)

    def unfinished(self) -> list[UnfinishedErasure]:
        with self._db.tx() as conn:
            rows = conn.execute(
                f"SELECT {_RECORD}, subject, step FROM erasures"
                " WHERE finished_us IS NULL AND subject IS NOT NULL ORDER BY id"
            ).fetchall()
        return [UnfinishedErasure(_record(r[:11]), str(r[11]), Step(max(int(r[12]), Step.BEGUN))) for r in rows]

    def unrewritten(self) -> list[ErasureRecord]:
        with self._db.tx() as conn:
            rows = conn.execute(f"SELECT {_RECORD} FROM erasures WHERE rewrite_due ORDER BY id").fetchall()
        return [_record(r) for r in rows]

    def rewritten(self, record: ErasureRecord, files: Mapping[str, str], done: bool) -> ErasureRecord:
        with self._db.tx() as conn:
            conn.execute(
                "UPDATE erasures SET postgres_files = %s, rewrite_due = rewrite_due AND NOT %s,"
                " step = CASE WHEN %s THEN GREATEST(step, %s) ELSE step END WHERE id = %s",
                (msgspec.json.encode(dict(files)), done, done, int(Step.REWRITTEN), record.id),
            )
        return dataclasses.replace(record, postgres_files=dict(files))

    def entries(self, record: ErasureRecord) -> list[ErasedEntry]:
        with self._db.tx() as conn:
            rows = conn.execute(
                f"SELECT {_ENTRY} FROM erased_entries WHERE erasure = %s ORDER BY stream, seq", (record.id,)
            ).fetchall()
        return [_entry(r) for r in rows]

    def erasures(self, namespace: str) -> list[ErasureRecord]:
        with self._db.tx() as conn:
            rows = conn.execute(
                f"SELECT {_RECORD} FROM erasures WHERE namespace = %s ORDER BY id DESC", (namespace,)
            ).fetchall()
        return [_record(r) for r in rows]

    def _open(
        self, conn: Connection, req: ErasureRequest, alias: str, through: Mapping[int, int], log_kept_ms: int | None
    ) -> ErasureRecord:
        """An unfinished record of the pseudonym (a run that died midway: taken up again, so
        the usage store's insert tokens are the same), or a new one."""
        found = conn.execute(
            f"SELECT {_RECORD} FROM erasures WHERE namespace = %s AND pseudonym = %s AND finished_us IS NULL"
            " ORDER BY id DESC LIMIT 1",
            (req.namespace, alias),
        ).fetchone()
        positions = {str(p): o for p, o in sorted(through.items())}
        if found is not None:
            conn.execute(
                "UPDATE erasures SET through = %s, subject = %s, step = %s, log_kept_ms = %s WHERE id = %s",
                (msgspec.json.encode(positions), req.subject, int(Step.BEGUN), log_kept_ms, found[0]),
            )
            return _record((*found[:7], msgspec.json.encode(positions), log_kept_ms, None, None))
        now = self._now_us()
        row = conn.execute(
            "INSERT INTO erasures (namespace, erased_us, actor, reason, pseudonym, counts, through, subject, step,"
            " log_kept_ms) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
            (req.namespace, now, req.actor, req.reason, alias, b"{}", msgspec.json.encode(positions), req.subject,
             int(Step.BEGUN), log_kept_ms),
        ).fetchone()  # fmt: skip
        assert row is not None
        return ErasureRecord(
            int(row[0]), req.namespace, now, req.actor, req.reason, alias, {}, 0, dict(through), log_kept_ms
        )

    def _forget_held(self, conn: Connection, ns: str, subject: str, stored: Sequence[ErasedKey]) -> int:
        """Delete the dedupe rows of the subject's quarantined events (held, released or
        dead-lettered) that no stored version has: ``_delete_held`` deletes those events in this
        transaction, they were never counted (a resend is held again, as in embedded mode), and
        their confirmed rows would otherwise tell corrections the key was accepted
        (``services.log_corrections``)."""
        known = {(k.source, k.id) for k in stored}
        held = [key for key in _held_keys(conn, ns, subject) if key not in known]
        if not held:
            return 0
        secret = self.secret()
        names = [dedupe_key(secret, ns, source, id_) for source, id_ in held]
        return int(conn.execute("DELETE FROM dedupe_keys WHERE key = ANY(%s::bytea[])", (names,)).rowcount)

    def _dedupe(self, conn: Connection, ns: str, keys: Sequence[ErasedKey]) -> int:
        """Each key's row marked erased (``adapters.postgres.dedupe``): it holds no identifier
        (its name is a keyed hash, its digest keyed) and keeps answering a resend as a duplicate;
        marked, it is no longer an accepted event's key to corrections. How many were marked now."""
        names = sorted({dedupe_key_of_erased(k.erased_id) for k in keys})
        return int(
            conn.execute(
                "UPDATE dedupe_keys SET erased = true WHERE key = ANY(%s::bytea[]) AND NOT erased", (names,)
            ).rowcount
        )

    def _journal(
        self,
        conn: Connection,
        ns: str,
        subject: str,
        alias: str,
        entries: Sequence[ErasedEntry],
        keys: Sequence[ErasedKey],
    ) -> int:
        """The journal rows of the erased keys: erased key, pseudonym, erased payload, reason."""
        raws = {(e.stream, e.seq): e.raw for e in entries}
        rewritten = 0
        for k in keys:
            rows = conn.execute(
                "SELECT id, stream, seq, subject, was_subject, raw FROM event_corrections"
                " WHERE namespace = %s AND source = %s AND event_id = %s",
                (ns, k.source, k.id),
            ).fetchall()
            for id_, stream, seq, subj, was, raw in rows:
                conn.execute(
                    "UPDATE event_corrections SET source = %s, event_id = %s, reason = %s, subject = %s,"
                    " was_subject = %s, raw = %s WHERE id = %s",
                    (
                        ERASED_SOURCE,
                        k.erased_id,
                        ERASED_REASON,
                        alias if subj == subject else subj,
                        alias if was == subject else was,
                        raws.get((stream, int(seq)), None if raw is None else b""),
                        id_,
                    ),
                )
                rewritten += 1
        return rewritten

    def _add(
        self, conn: Connection, record: ErasureRecord, counts: Mapping[str, int], *, finished: bool
    ) -> ErasureRecord:
        row = conn.execute("SELECT counts FROM erasures WHERE id = %s", (record.id,)).fetchone()
        total: dict[str, int] = msgspec.json.decode(bytes(row[0])) if row else {}
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        conn.execute(  # finished: the subject is forgotten, the tables are to be rewritten (rewritten())
            "UPDATE erasures SET counts = %s, finished_us = CASE WHEN %s THEN %s ELSE finished_us END,"
            " subject = CASE WHEN %s THEN NULL ELSE subject END, rewrite_due = rewrite_due OR %s WHERE id = %s",
            (msgspec.json.encode(total), finished, self._now_us(), finished, finished, record.id),
        )
        return dataclasses.replace(record, counts=total, through_seq=sum((record.through_log or {}).values()))


class PgErasedEntries:
    """``ports.erasure.ErasedEntries`` over ``erased_entries``."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def through(self) -> dict[str, int]:
        with self._db.tx() as conn:
            return {s: int(m) for s, m in conn.execute("SELECT stream, max(seq) FROM erased_entries GROUP BY stream")}

    def within(self, stream: str, after: int, end: int) -> dict[int, ErasedEntry]:
        with self._db.tx() as conn:
            rows = conn.execute(
                f"SELECT {_ENTRY} FROM erased_entries WHERE stream = %s AND seq > %s AND seq <= %s",
                (stream, after, end),
            ).fetchall()
        return {int(r[1]): _entry(r) for r in rows}


def erasure_secret(db: PgDatabase) -> bytes:
    """The deployment's erasure secret (``meta.erasure_key``), made by the first node that asks."""
    with db.tx() as conn:
        return secret_in(conn)


def _record(r: Any) -> ErasureRecord:
    id_, ns, at, actor, reason, alias, counts, through, log_kept_ms, files, tables = r
    positions = {int(p): int(o) for p, o in msgspec.json.decode(bytes(through)).items()}
    return ErasureRecord(
        int(id_),
        ns,
        int(at),
        actor,
        reason,
        alias,
        msgspec.json.decode(bytes(counts)),
        sum(positions.values()),
        positions,
        None if log_kept_ms is None else int(log_kept_ms),
        None if files is None else msgspec.json.decode(bytes(files)),
        None if tables is None else msgspec.json.decode(bytes(tables)),
    )


def _entry(r: Any) -> ErasedEntry:
    return ErasedEntry(
        r[0], int(r[1]), r[2], r[3], r[4], int(r[5]), int(r[6]), r[7], bytes(r[8]), int(r[9]), bytes(r[10])
    )


def _held_keys(conn: Connection, namespace: str, subject: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT DISTINCT source, event_id FROM quarantine WHERE namespace = %s AND subject = %s ORDER BY 1, 2",
        (namespace, subject),
    ).fetchall()
    return [(str(src), str(id_)) for src, id_ in rows]


def _dead_letters(conn: Connection, namespace: str, subject: str) -> list[int]:
    rows = conn.execute("SELECT id, raw FROM dead_letters WHERE namespace = %s ORDER BY id", (namespace,))
    return [int(id_) for id_, raw in rows if names(bytes(raw), subject)]


def _delete_held(conn: Connection, namespace: str, subject: str) -> dict[str, int]:
    """Quarantined events (held or released copies: they carry the payload), dead letters and
    portal tokens of the subject: deleted."""
    quarantined = conn.execute(
        "DELETE FROM quarantine WHERE namespace = %s AND subject = %s", (namespace, subject)
    ).rowcount
    dead = _dead_letters(conn, namespace, subject)
    deleted = conn.execute("DELETE FROM dead_letters WHERE id = ANY(%s)", (dead,)).rowcount if dead else 0
    tokens = conn.execute(
        "DELETE FROM portal_tokens WHERE namespace = %s AND subject = %s", (namespace, subject)
    ).rowcount
    return {"quarantined": quarantined, "deadLetters": deleted, "portalTokens": tokens}
