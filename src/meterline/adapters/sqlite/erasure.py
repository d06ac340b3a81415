"""Erasure of a subject in SQLite (``ports.erasure.Erasures``; rules in ``domain.erasure``).

1. **Prepare** (a read connection, no lock held): find the subject's ledger entries and every
   other version of their keys (corrections), check each against the hash chain (an entry
   edited by hand is refused, never laundered into a kept digest), and compute its erased form:
   erased key, pseudonym, keyed digest, payload reduced to what the live meters read (checked:
   every live meter reads the same from it), and the content digest before and after.
2. **Hour tasks** (``erasure_hours``): the entries of keys within one UTC hour, a few hours
   per writer task, with those hours' rollups moved to the pseudonym.
3. **Last pass** (writer tasks, so no ingest of the subject interleaves with one): erases what
   remains up to the aggregator's offset (``cut``; entries the subject got since step 1 are
   prepared in the task), so the rollups that move as a whole are exactly the fold of the
   entries erased; a key's versions go together. It repeats, after waiting for the
   aggregator, until every entry acknowledged before the request is erased. In each pass:
   ledger rows rewritten and recorded in ``ledger_erased``, and linked as one link of the
   erasure chain (``erasure_chain``); rollups, summaries, distinct
   values and meter subjects moved to the pseudonym; customer mappings and a customer key
   equal to the subject moved to it; quarantined events, dead letters and portal tokens of
   the subject deleted; correction reasons of its entries replaced; the audit row written
   (by the first task) or its counts added to. Each task commits as a whole.
4. **After the last COMMIT**: live counters reload, the WAL is checkpointed and truncated (the frames
   that held the old rows), and a store from before ``secure_delete`` is vacuumed once.

Entries of the subject acknowledged before the request are erased; those acknowledged while it
runs are erased or kept (the audit record's ``through_seq`` says where the last pass cut);
those after its answer are a new life of the subject, kept as sent.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import msgspec

from meterline.adapters.sqlite import rollups
from meterline.adapters.sqlite.chain import read_format
from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.erasure_chain import append_link
from meterline.adapters.sqlite.erasure_hours import Rewrite, chunks, erased, hour_batches, move_hours, ready_hours
from meterline.adapters.sqlite.ingest import IngestState, live_meters
from meterline.adapters.sqlite.recompute import HOUR_US, refold_builtins
from meterline.adapters.sqlite.rekey import rekey_references
from meterline.adapters.sqlite.schema import SECURE_DELETE_KEY, connect
from meterline.adapters.sqlite.usage import ERASURE_GENERATION_KEY
from meterline.domain.erasure import (
    ERASED_REASON,
    ERASED_SOURCE,
    ErasureRecord,
    ErasureRequest,
    erased_digest,
    erased_id,
    erased_raw,
    names,
    pseudonym,
    subject_not_found,
)
from meterline.domain.errors import Conflict, StorageUnavailable
from meterline.domain.integrity.chain import GENESIS, ChainFormat, correction_record, link, parse_correction_record
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.model import MeterSpec

log = logging.getLogger(__name__)

_ROW = "seq, namespace, source, id, type, subject, time_us, received_us, digest, raw, chain, correction"
_decode = msgspec.json.Decoder(float_hook=Decimal)  # numbers stay exact, as the meters read them
_encode = msgspec.json.Encoder(decimal_format="number")
_spec = msgspec.json.Decoder(MeterSpec)
ATTEMPTS = 20
"""Passes at most, each after waiting for the aggregator (bounded by ``aggregation.max_wait``)."""


class SqliteErasures:
    def __init__(self, db: Database, state: IngestState, now_us: Callable[[], int]) -> None:
        self._db = db
        self._state = state
        self._now_us = now_us
        self._lock = threading.Lock()  # one erasure at a time: step 1 stays true until step 2
        self.changed: Callable[[], None] = lambda: None
        """Called after COMMIT: the customers' subjects changed (live counters reload)."""

    def erase(self, request: ErasureRequest) -> ErasureRecord:
        with self._lock:
            reader = self._db.reader()
            prepared, requested_at = self._prepare(reader, request, 0)
            dead = _dead_letters(reader, request, 0)
            record: ErasureRecord | None = None
            meters = reader.execute("SELECT count(*) FROM meters WHERE namespace = ?", (request.namespace,))
            for hours in hour_batches(prepared, int(meters.fetchone()[0])):  # small writer tasks first (erasure_hours)
                hourly = functools.partial(self._apply_hours, req=request, hours=hours, requested_at=requested_at)
                record = self._db.writer.call(functools.partial(hourly, record=record))
                self.changed()
            remaining = True
            for _ in range(ATTEMPTS):
                one_pass = functools.partial(
                    self._apply, req=request, prepared=prepared, requested_at=requested_at, dead=dead
                )
                record, remaining = self._db.writer.call(functools.partial(one_pass, record=record))
                if not remaining:
                    break
                self._db.fresh()  # entries acknowledged before the request wait for the aggregator
                time.sleep(0.01)
            self.changed()
            self._scrub()
            if remaining or record is None:
                raise StorageUnavailable(
                    "the aggregator did not reach some of the subject's events; run the erasure again to finish it"
                )
            return record

    def erasures(self, namespace: str) -> list[ErasureRecord]:
        rows = self._db.reader().execute(
            "SELECT id, namespace, erased_us, actor, reason, pseudonym, counts, through_seq FROM erasures"
            " WHERE namespace = ? ORDER BY id DESC",
            (namespace,),
        )
        return [
            ErasureRecord(id_, ns, at, actor, reason, alias, msgspec.json.decode(counts), through)
            for id_, ns, at, actor, reason, alias, counts, through in rows
        ]

    # -- 1. prepare -------------------------------------------------------------------------

    def _prepare(
        self, conn: sqlite3.Connection, req: ErasureRequest, after: int, upto: int | None = None
    ) -> tuple[list[Rewrite], int]:
        """The erased form of the subject's entries in ``(after, upto]`` (and of every version of
        their keys not erased yet), and the ledger head they were read at."""
        head = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
        last = head if upto is None else min(head, upto)
        seqs = [
            s
            for (s,) in conn.execute(
                "SELECT seq FROM events WHERE seq > ? AND seq <= ? AND namespace = ? AND subject = ?",
                (after, last, req.namespace, req.subject),
            )
        ]
        every = _versions(conn, seqs)
        versions = sorted(set(every) - erased(conn, every))
        secret = self._state.dedupe.erasure_secret
        alias = pseudonym(secret, req.namespace, req.subject)
        paths = _paths(conn)
        voids = _voids(conn, versions)
        fmt = read_format(conn)
        out = []
        for chunk in chunks(versions, 500):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {_ROW} FROM events WHERE seq IN ({marks}) ORDER BY seq", chunk):
                out.append(self._rewrite(conn, row, (req.subject, alias), paths, row[0] in voids, fmt))
        return out, head

    def _rewrite(
        self,
        conn: sqlite3.Connection,
        row: tuple[Any, ...],
        names: tuple[str, str],
        paths: dict[tuple[str, str], list[CompiledMeter]],
        void: bool,
        fmt: ChainFormat,
    ) -> Rewrite:
        seq, ns, src, id_, type_, subj, time_us, received_us, digest, raw, chain, correction = row
        subject, alias = names
        kept = fmt.content(seq, ns, src, id_, type_, subj, time_us, received_us, digest, raw, correction)
        previous = conn.execute("SELECT chain FROM events WHERE seq = ?", (seq - 1,)).fetchone()
        prev = GENESIS if seq == 1 else (None if previous is None else previous[0])
        if prev is None or chain is None or link(prev, seq, kept) != chain:
            raise Conflict(
                f"ledger entry {seq} of the subject does not match the hash chain (edited by hand?);"
                " run `meterline verify` before erasing",
                code="ledger_tampered",
            )
        secret = self._state.dedupe.erasure_secret
        new_id = erased_id(secret, ns, src, id_)
        new_subject = alias if subj == subject else subj
        if void:
            new_raw = _encode.encode({"void": {"original": msgspec.json.decode(raw)["void"]["original"]}})
        else:
            new_raw = _reduce(raw, ns, type_, new_subject, new_id, time_us, paths.get((ns, type_), []))
        new_digest = erased_digest(secret, digest)
        new_correction = _erased_correction(correction)
        content = fmt.content(
            seq,
            ns,
            ERASED_SOURCE,
            new_id,
            type_,
            new_subject,
            time_us,
            received_us,
            new_digest,
            new_raw,
            new_correction,
        )
        key_hash = self._state.dedupe.key_hash(ns, src, id_)
        return Rewrite(
            seq,
            ERASED_SOURCE,
            new_id,
            new_subject,
            new_digest,
            new_raw,
            kept,
            content,
            key_hash,
            time_us,
            new_correction,
        )

    # -- 2. apply ---------------------------------------------------------------------------

    def _apply(
        self,
        conn: sqlite3.Connection,
        req: ErasureRequest,
        prepared: list[Rewrite],
        requested_at: int,
        dead: tuple[list[int], int],
        record: ErasureRecord | None,
    ) -> tuple[ErasureRecord, bool]:
        """One pass: erase every entry of the subject up to the aggregator's offset (``cut``),
        whose rollups are then exactly the fold of those entries. Returns the audit record and
        whether entries from before the request remain (not aggregated yet: another pass)."""
        cut = int(conn.execute("SELECT value FROM meta WHERE key = 'aggregated_seq'").fetchone()[0])
        late = self._prepare(conn, req, requested_at, cut)[0] if cut > requested_at else []
        keys: dict[str, list[Rewrite]] = {}
        done = erased(conn, [r.seq for r in prepared + late])
        for r in prepared + late:
            if r.seq not in done:
                keys.setdefault(r.id, []).append(r)  # the versions of one key go together
        ready = [r for versions in keys.values() if max(v.seq for v in versions) <= cut for r in versions]
        remaining = any(v.seq <= requested_at for vs in keys.values() if max(x.seq for x in vs) > cut for v in vs)
        alias = pseudonym(self._state.dedupe.erasure_secret, req.namespace, req.subject)
        record = record or self._start(conn, req, alias, cut)
        counts = {"ledgerEntries": self._rewrite_ledger(conn, ready, record.id)}
        counts["events"] = len({r.id for r in ready})
        counts |= _move_usage(conn, req.namespace, req.subject, alias)
        cap = self._state.settings.max_group_cardinality
        refold_builtins(conn, req.namespace, alias, {r.time_us - r.time_us % HOUR_US for r in ready}, cap)
        dead_ids, dead_last = dead
        counts |= _delete_held(conn, req.namespace, req.subject, [*dead_ids, *_dead_letters(conn, req, dead_last)[0]])
        if not record.counts and not remaining and not any(counts.values()):
            raise subject_not_found()
        return self._finish(conn, record, counts, cut), remaining

    def _apply_hours(
        self,
        conn: sqlite3.Connection,
        req: ErasureRequest,
        hours: dict[int, list[Rewrite]],
        requested_at: int,
        record: ErasureRecord | None,
    ) -> ErasureRecord | None:
        """A small pass (``erasure_hours``): the entries of whole UTC hours and those hours'
        rollups; the customer maps the pseudonym beside the subject until the last pass."""
        cut = int(conn.execute("SELECT value FROM meta WHERE key = 'aggregated_seq'").fetchone()[0])
        ready, done = ready_hours(conn, req, hours, requested_at, cut)
        if not ready:
            return record
        alias = pseudonym(self._state.dedupe.erasure_secret, req.namespace, req.subject)
        record = record or self._start(conn, req, alias, cut)
        counts = {"ledgerEntries": self._rewrite_ledger(conn, ready, record.id), "events": len({r.id for r in ready})}
        counts["rollupRows"] = move_hours(conn, req.namespace, req.subject, alias, done)
        cap = self._state.settings.max_group_cardinality
        refold_builtins(conn, req.namespace, alias, {hour * HOUR_US for hour in done}, cap)
        conn.execute(
            "INSERT OR IGNORE INTO customer_subjects SELECT namespace, ?, customer FROM customer_subjects"
            " WHERE namespace = ? AND subject = ?",
            (alias, req.namespace, req.subject),
        )
        return self._finish(conn, record, counts, cut)

    def _start(self, conn: sqlite3.Connection, req: ErasureRequest, alias: str, cut: int) -> ErasureRecord:
        """The audit record, written by the first pass that erases anything."""
        now = self._now_us()
        row = conn.execute(
            "INSERT INTO erasures (namespace, erased_us, actor, reason, pseudonym, through_seq, counts)"
            " VALUES (?,?,?,?,?,?,'{}') RETURNING id",
            (req.namespace, now, req.actor, req.reason, alias, cut),
        ).fetchone()
        return ErasureRecord(int(row[0]), req.namespace, now, req.actor, req.reason, alias, {}, cut)

    def _finish(
        self, conn: sqlite3.Connection, record: ErasureRecord, counts: dict[str, int], cut: int
    ) -> ErasureRecord:
        """Add a pass's counts to the audit record; tell the aggregator and the ack path."""
        total = dict(record.counts)
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        conn.execute(
            "UPDATE erasures SET counts = ?, through_seq = ? WHERE id = ?", (msgspec.json.encode(total), cut, record.id)
        )
        # the aggregator's known subjects are stale now: a batch computed before is refused
        conn.execute(
            "INSERT INTO meta VALUES (?, '1') ON CONFLICT (key) DO UPDATE SET value = CAST(value + 1 AS TEXT)",
            (ERASURE_GENERATION_KEY,),
        )
        self._state.invalidate()  # the customers' subjects changed
        self._state.recent.clear()  # entries in memory still carry the subject
        return dataclasses.replace(record, counts=total, through_seq=cut)

    def _rewrite_ledger(self, conn: sqlite3.Connection, rewrites: Sequence[Rewrite], erasure: int) -> int:
        conn.executemany(
            "UPDATE events SET source = ?, id = ?, subject = ?, digest = ?, raw = ?, correction = ? WHERE seq = ?",
            [(r.source, r.id, r.subject, r.digest, r.raw, r.correction, r.seq) for r in rewrites],
        )
        conn.executemany(
            "INSERT INTO ledger_erased (seq, erasure, kept, content, key_hash) VALUES (?,?,?,?,?)",
            [(r.seq, erasure, r.kept, r.content, r.key_hash) for r in rewrites],
        )
        append_link(conn, erasure, [(r.seq, r.content) for r in rewrites])  # the same transaction
        conn.executemany("UPDATE corrections SET reason = ? WHERE seq = ?", [(ERASED_REASON, r.seq) for r in rewrites])
        return len(rewrites)

    # -- 3. after COMMIT ----------------------------------------------------------------------

    def _scrub(self) -> None:
        """Truncate the WAL (it held the old rows) and vacuum a store whose free pages may still
        hold bytes from before ``secure_delete``. A busy WAL is retried, then logged: the next
        checkpoint overwrites it."""
        conn = connect(self._db.path)
        try:
            flag = conn.execute("SELECT value FROM meta WHERE key = ?", (SECURE_DELETE_KEY,)).fetchone()
            if flag is None:
                conn.execute("VACUUM")
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, 'vacuumed')", (SECURE_DELETE_KEY,))
            for _ in range(50):
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    return
                time.sleep(0.02)
            log.warning("the WAL could not be truncated after an erasure (readers busy); it is overwritten later")
        finally:
            conn.close()


def _dead_letters(conn: sqlite3.Connection, req: ErasureRequest, after: int) -> tuple[list[int], int]:
    """The dead letters of the subject with an id after ``after``, and the last id looked at."""
    quoted = msgspec.json.encode(req.subject)
    ids, last = [], after
    rows = conn.execute("SELECT id, namespace, raw FROM dead_letters WHERE id > ? ORDER BY id", (after,))
    for id_, namespace, raw in rows:
        last = id_
        if namespace == req.namespace and _names(bytes(raw), req.subject, quoted):
            ids.append(id_)
    return ids, last


def _versions(conn: sqlite3.Connection, seqs: Sequence[int]) -> list[int]:
    """``seqs`` and every other version of their keys (the original and its corrections)."""
    originals: set[int] = set()
    for chunk in chunks(list(seqs), 500):
        marks = ",".join("?" * len(chunk))
        found = dict(conn.execute(f"SELECT seq, original FROM corrections WHERE seq IN ({marks})", chunk).fetchall())
        originals.update(found.get(s, s) for s in chunk)
    out = set(seqs) | originals
    for chunk in chunks(sorted(originals), 500):
        marks = ",".join("?" * len(chunk))
        out.update(s for (s,) in conn.execute(f"SELECT seq FROM corrections WHERE original IN ({marks})", chunk))
    return sorted(out)


def _erased_correction(stored: bytes | None) -> bytes | None:
    """A chained correction record (content format 2) with its reason erased, as the erasure
    rewrites the ``corrections`` row (its action, original and actor stay)."""
    fields = None if stored is None else parse_correction_record(bytes(stored))
    if fields is None:
        return stored
    action, original, _, actor = fields
    return correction_record(action, original, ERASED_REASON, actor)


def _voids(conn: sqlite3.Connection, seqs: Sequence[int]) -> set[int]:
    out: set[int] = set()
    for chunk in chunks(list(seqs), 500):
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT seq FROM corrections WHERE action = 'void' AND seq IN ({marks})"
        out.update(s for (s,) in conn.execute(sql, chunk))
    return out


def _paths(conn: sqlite3.Connection) -> dict[tuple[str, str], list[CompiledMeter]]:
    """The live meters by (namespace, event type): what an erased payload keeps."""
    out: dict[tuple[str, str], list[CompiledMeter]] = {}
    for meter in live_meters(conn):
        out.setdefault((meter.namespace, meter.spec.event_type), []).append(CompiledMeter(meter))
    return out


def _reduce(
    raw: bytes, ns: str, type_: str, subject: str, id_: str, time_us: int, meters: Sequence[CompiledMeter]
) -> bytes:
    return erased_raw(raw, ns, type_, subject, id_, time_us, meters, keep_size=True)


def _move_usage(conn: sqlite3.Connection, namespace: str, subject: str, alias: str) -> dict[str, int]:
    """Rollups, summaries, distinct values and meter subjects; customer mappings and keys."""
    moved = 0
    for key, spec in conn.execute("SELECT key, spec FROM meters WHERE namespace = ?", (namespace,)).fetchall():
        moved += rollups.move_subject(conn, key, _spec.decode(spec).aggregation, subject, alias)
    mapped = conn.execute(
        "SELECT customer FROM customer_subjects WHERE namespace = ? AND subject = ?", (namespace, subject)
    ).fetchall()
    conn.execute(
        "INSERT OR IGNORE INTO customer_subjects SELECT namespace, ?, customer FROM customer_subjects"
        " WHERE namespace = ? AND subject = ?",
        (alias, namespace, subject),
    )
    conn.execute("DELETE FROM customer_subjects WHERE namespace = ? AND subject = ?", (namespace, subject))
    kept = 0  # the subject keys deleted customers are kept with (adapters.sqlite.customers)
    for cid, stored in conn.execute(
        "SELECT id, deleted_subjects FROM customers WHERE namespace = ? AND deleted_subjects IS NOT NULL", (namespace,)
    ).fetchall():
        had = msgspec.json.decode(stored)
        if subject in had:
            renamed = sorted({alias if s == subject else s for s in had})
            conn.execute("UPDATE customers SET deleted_subjects = ? WHERE id = ?", (msgspec.json.encode(renamed), cid))
            kept += 1
    keys = 0
    for (cid,) in conn.execute(
        "SELECT id FROM customers WHERE namespace = ? AND key = ?", (namespace, subject)
    ).fetchall():
        taken = conn.execute(
            "SELECT 1 FROM customers WHERE namespace = ? AND key = ? AND deleted_us IS NULL", (namespace, alias)
        ).fetchone()
        new_key = f"{alias}.{cid}" if taken else alias
        conn.execute("UPDATE customers SET key = ? WHERE id = ?", (new_key, cid))
        rekey_references(conn, cid, new_key)  # its entitlements and subscriptions carry the key
        keys += 1
    return {"rollupRows": moved, "customerMappings": len(mapped) + kept, "customerKeys": keys}


def _delete_held(conn: sqlite3.Connection, namespace: str, subject: str, dead: list[int]) -> dict[str, int]:
    """Quarantined events, dead letters (``dead``: found by :func:`_dead_letters`) and portal
    tokens of the subject: deleted."""
    quarantined = conn.execute(
        "DELETE FROM quarantine WHERE namespace = ? AND subject = ?", (namespace, subject)
    ).rowcount
    deleted = 0
    for chunk in chunks(dead, 500):
        marks = ",".join("?" * len(chunk))
        deleted += conn.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", chunk).rowcount
        conn.execute(f"DELETE FROM resubmissions WHERE dead_letter IN ({marks})", chunk)
    tokens = conn.execute(
        "DELETE FROM portal_tokens WHERE namespace = ? AND subject = ?", (namespace, subject)
    ).rowcount
    return {"quarantined": quarantined, "deadLetters": deleted, "portalTokens": tokens}


def _names(raw: bytes, subject: str, quoted: bytes) -> bool:
    return names(raw, subject)
