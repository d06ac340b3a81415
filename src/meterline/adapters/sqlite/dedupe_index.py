"""The dedupe index: where the first event of an idempotency key (namespace, source, id) may be.

The ledger (``events``, plus ``quarantine`` for held events) is the only durable per-event write;
the index is derived from it and can always be rebuilt from it. It maps a keyed 64-bit hash of
the key to candidate rows: a ledger seq (> 0) or a quarantine id (stored as ``-id``). It never
decides alone. Per batch:

1. hash every key; collect the candidates of the memory tables (recent ledger events after
   ``sealed_to``, a table being sealed, quarantined events) and of every sealed run (one
   vectorised binary search per run over the whole batch);
2. read every candidate row (one query for the ledger, one for the quarantine) and keep only
   rows whose namespace, source and id equal the key: a hash collision costs a read, never an
   event; a candidate left by a rolled-back write finds no row (or another key's) and is ignored;
3. the newest matching row decides: a duplicate when it was received at or after ``oldest_us``
   (the dedupe window and the pruning floor), and its digest tells a conflict.

Writes only touch memory (``add_many``); the memory table is sealed into an immutable run in the
background after a commit (``committed``) and runs are merged in the background
(``dedupe_seal``). On open, every ledger event after the manifest's ``sealed_to`` and every
quarantined event is indexed again, so a crash at any moment loses nothing: what no committed
manifest covers is read back from the ledger.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import msgspec
import numpy as np

from meterline.adapters.sqlite.dedupe_runs import Run, RunStore
from meterline.adapters.sqlite.dedupe_seal import Sealer, Table, level_of
from meterline.domain.erasure import ERASED_SOURCE, erased_digest, erased_id
from meterline.domain.events.model import Event

Key = tuple[str, str, str]
Hasher = Callable[[str, str, str], int]
Row = tuple[Key, bytes, int]  # key, digest, received_us
HASH_KEY = "dedupe_hash_key"  # in ``meta``: the secret of the keyed hash
ERASURE_KEY = "erasure_key"  # in ``meta``: the secret of erased keys and pseudonyms (domain.erasure)
SEAL_KEYS = 262_144  # keys in the memory table before it is sealed into a run (~30 MB of memory)
FANOUT = 4  # runs of one size class merged together
BUILD_CHUNK = 2_000_000  # ledger events per run when indexing a long ledger at open


def keyed_hasher(secret: bytes) -> Hasher:
    """A keyed 64-bit BLAKE2b of the key: stable across restarts, and nobody who lacks the
    database's secret can aim many ids at one hash value (which would only cost reads)."""
    keyed = hashlib.blake2b(digest_size=8, key=secret)

    def h(namespace: str, source: str, id_: str) -> int:
        x = keyed.copy()
        x.update(f"{len(namespace)}:{namespace}{len(source)}:{source}{id_}".encode())
        return int.from_bytes(x.digest(), "little", signed=True)

    return h


class DedupeIndex:
    """Used by the writer thread (``open``, ``lookup``, ``add_many``, ``committed``) and the pruner
    (``forget``); sealing and merging run on their own threads."""

    def __init__(
        self,
        directory: Path,
        *,
        seal_keys: int = SEAL_KEYS,
        fanout: int = FANOUT,
        build_chunk: int = BUILD_CHUNK,
        hasher: Hasher | None = None,
        crash_point: Callable[[str], None] | None = None,
    ) -> None:
        self._store = RunStore(directory, crash_point)
        self._seal_keys = seal_keys
        self._build_chunk = max(build_chunk, seal_keys)
        self._injected = hasher
        self._hash: Hasher = hasher or keyed_hasher(b"")
        self._lock = threading.Lock()  # the memory tables and the run list, as one
        self._mem: Table = Table()  # ledger events after sealed_to
        self._quarantined: Table = Table()
        self._recent: dict[Key, int] = {}  # hashes of the last batch looked up
        self._last = (0, 0)  # (seq, hash) of the newest ledger event added
        self._sealer = Sealer(self._store, self._lock, seal_keys, fanout)
        self._fanout = fanout
        self.erasure_secret = b""
        """The secret of erased keys (``domain.erasure``), read at ``open``."""
        self.opened = False

    @property
    def sole_writer(self) -> bool:
        """Whether this process holds the index's lock: no other process (a server) appends to
        this data directory now. Known once opened."""
        return self._store.owner

    # -- open: the runs of the manifest, then the ledger after them ----------------------

    def open(self, conn: sqlite3.Connection) -> None:
        """Load the runs and index what they do not cover (a writer task: reads see the ledger)."""
        if self.opened:
            return
        secret = self._secret(conn)
        self.erasure_secret = _meta_secret(conn, ERASURE_KEY)
        self._hash = self._injected or keyed_hasher(secret)
        key_id = hashlib.blake2b(secret, digest_size=8).hexdigest()
        manifest = self._store.load(key_id)
        if manifest is not None and not self._matches(conn, manifest.sealed_to, manifest.sealed_hash):
            if self._store.owner:
                self._store.delete(manifest.runs)  # another ledger (a restored backup?): start over
            manifest = None
        self._sealer.reset(key_id, manifest)
        self._index_ledger(conn, self._sealer.sealed_to)
        for qid, ns, src, id_ in conn.execute("SELECT id, namespace, source, event_id FROM quarantine"):
            self._quarantined.put(self._hash(ns, src, id_), -qid, 0)
        last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        self._last = (last, self._hash_of(conn, last))
        self.opened = True
        if self._store.owner:
            self._sealer.merge_soon()

    def _secret(self, conn: sqlite3.Connection) -> bytes:
        return _meta_secret(conn, HASH_KEY)

    def _matches(self, conn: sqlite3.Connection, seq: int, expected: int) -> bool:
        if seq == 0:
            return True
        return self._hash_of(conn, seq) == expected

    def key_hash(self, namespace: str, source: str, id_: str) -> int:
        """The index's hash of a key (an erasure keeps it for the entries it rewrites)."""
        return self._hash(namespace, source, id_)

    def _index_ledger(self, conn: sqlite3.Connection, after: int) -> None:
        """Every ledger event after ``after``: full chunks become runs, the rest the memory table."""
        # An erased entry's key is hashed as it was before the erasure (``ledger_erased``).
        erased = dict(conn.execute("SELECT seq, key_hash FROM ledger_erased WHERE seq > ?", (after,)).fetchall())
        rows = conn.execute(
            "SELECT seq, namespace, source, id, received_us FROM events WHERE seq > ? ORDER BY seq", (after,)
        )
        while True:
            hashes, seqs, newest, last = array("q"), array("q"), 0, 0
            for seq, ns, src, id_, received in rows:
                hashes.append(erased[seq] if src == ERASED_SOURCE and seq in erased else self._hash(ns, src, id_))
                seqs.append(seq)
                newest, last = max(newest, received), seq
                if len(seqs) == self._build_chunk:
                    break
            if len(seqs) >= self._seal_keys and self._store.owner:
                h_arr, s_arr = np.frombuffer(hashes, np.int64), np.frombuffer(seqs, np.int64)
                self._sealer.seal_now(h_arr, s_arr, newest, last, self._hash_of(conn, last))
            else:  # a short tail, or another process owns the runs: memory
                for h, seq in zip(hashes, seqs, strict=True):
                    self._mem.put(h, seq, newest)
            if len(seqs) < self._build_chunk:
                return

    def _hash_of(self, conn: sqlite3.Connection, seq: int) -> int:
        if seq == 0:
            return 0
        row = conn.execute(
            "SELECT e.namespace, e.source, e.id, x.key_hash FROM events e LEFT JOIN ledger_erased x USING (seq)"
            " WHERE e.seq = ?",
            (seq,),
        ).fetchone()
        if row is None:
            return 0
        ns, src, id_, erased = row
        return int(erased) if src == ERASED_SOURCE and erased is not None else self._hash(ns, src, id_)

    # -- the ingest path -----------------------------------------------------------------

    def lookup(self, conn: sqlite3.Connection, events: Sequence[Event], oldest_us: int) -> dict[tuple[str, str], bytes]:
        """{(source, id): digest of the first payload} for the keys of ``events`` seen at or
        after ``oldest_us`` (-1: ever). Reads through ``conn``, so it sees its own transaction."""
        keys = [(e.namespace, e.source, e.id) for e in events]
        hashes = [self._hash(*k) for k in keys]
        self._recent = dict(zip(keys, hashes, strict=True))
        candidates = self._candidates(hashes)
        if not candidates:
            return {}
        rows = _rows(conn, {ref for refs in candidates.values() for ref in refs})
        known: dict[tuple[str, str], bytes] = {}
        for i, refs in candidates.items():
            best: Row | None = None
            erased = False
            for row in (rows.get(ref) for ref in refs):
                if row is None:
                    continue
                is_erased = row[0][1] == ERASED_SOURCE and row[0] == self._erased_key(keys[i])
                if (row[0] == keys[i] or is_erased) and (best is None or row[2] > best[2]):
                    best, erased = row, is_erased
            if best is not None and best[2] >= oldest_us:
                known[(keys[i][1], keys[i][2])] = self._first_digest(best[1], events[i].digest, erased)
        return known

    def _erased_key(self, key: Key) -> Key:
        """The key an erasure gave the entries of ``key`` (``domain.erasure``)."""
        return (key[0], ERASED_SOURCE, erased_id(self.erasure_secret, *key))

    def _first_digest(self, stored: bytes, sent: bytes, erased: bool) -> bytes:
        """The first payload's digest as the ack path compares it: an erased entry keeps only a
        keyed digest, so a resend with the same payload is told by computing that again."""
        if erased and erased_digest(self.erasure_secret, sent) == stored:
            return sent
        return stored

    def seqs(self, conn: sqlite3.Connection, namespace: str, source: str, id_: str) -> list[int]:
        """Every ledger seq holding the key (its entries and corrections), ascending."""
        key = (namespace, source, id_)
        refs = self._candidates([self._hash(*key)]).get(0, [])
        rows = _rows(conn, {ref for ref in refs if ref > 0})
        return sorted(seq for seq, row in rows.items() if row[0] == key)

    def _candidates(self, hashes: list[int]) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        with self._lock:
            tables = [t for t in (self._mem, self._sealer.frozen, self._quarantined) if len(t)]
            runs = self._sealer.runs
            for i, h in enumerate(hashes):
                for table in tables:
                    refs = table.get(h)
                    if refs:
                        found.setdefault(i, []).extend(refs)
        if runs:
            probe = np.array(hashes, dtype=np.int64)
            for run in runs:
                for i, seq in run.find(probe):
                    found.setdefault(i, []).append(seq)
        return found

    def add_many(self, rows: Iterable[tuple[str, str, str, int, bytes, int]]) -> None:
        """Index written rows: (namespace, source, id, seq or -quarantine id, digest, received_us)."""
        recent, hasher = self._recent, self._hash
        with self._lock:
            for ns, src, id_, ref, _, received in rows:
                h = recent.get((ns, src, id_))
                h = hasher(ns, src, id_) if h is None else h
                if ref > 0:
                    self._mem.put(h, ref, received)
                    if ref >= self._last[0]:  # a seq reused after a rollback: its newest key
                        self._last = (ref, h)
                else:
                    self._quarantined.put(h, ref, received)

    def committed(self, last_seq: int) -> None:
        """After a COMMIT (writer thread), when every seq up to ``last_seq`` is committed: seal
        the memory table once it is big enough. It holds every committed event after the last
        seal (each was added before its commit), so its run covers the ledger up to ``last_seq``."""
        if len(self._mem) < self._seal_keys or self._last[0] != last_seq or not self._store.owner:
            return
        if not self._sealer.idle():
            return
        with self._lock:
            mem, self._mem = self._mem, Table()
        self._sealer.seal_soon(mem, last_seq, self._last[1])

    # -- expiry (finite dedupe window) --------------------------------------------------

    def forget(self, expired: Sequence[tuple[str, str, str, int]], floor_us: int) -> int:
        """Drop the keys of expired ledger events from memory, and whole runs received before
        ``floor_us``; returns how many keys are gone. Only for keys the floor already expires:
        the answers of ``lookup`` do not change."""
        gone = 0
        with self._lock:  # a table being sealed is left alone: its run expires whole
            for ns, src, id_, seq in expired:
                gone += self._mem.drop(self._hash(ns, src, id_), seq)
        return gone + (self._sealer.expire(floor_us) if self._store.owner else 0)

    def held(self) -> tuple[list[int], list[int]]:
        """(ledger seqs, quarantine ids) the index holds keys for: for inspection and tests."""
        with self._lock:
            seqs = [*self._mem.refs(), *self._sealer.frozen.refs()]
            runs = self._sealer.runs
            quarantined = [-ref for ref in self._quarantined.refs()]
        for run in runs:
            seqs.extend(run.seqs.tolist())
        return seqs, quarantined

    def runs(self) -> tuple[Run, ...]:
        return self._sealer.runs

    def levels(self) -> list[int]:
        return sorted(level_of(r.count, self._seal_keys, self._fanout) for r in self._sealer.runs)

    def wait(self) -> None:
        """Until background sealing and merging are done (tests, benchmarks, close)."""
        self._sealer.wait()

    def close(self) -> None:
        self._sealer.close()
        self._store.close()


def _meta_secret(conn: sqlite3.Connection, key: str) -> bytes:
    """A random secret kept in ``meta`` under ``key`` (made on first use)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        row = (secrets.token_hex(16 if key == HASH_KEY else 32),)
        conn.execute("INSERT INTO meta VALUES (?, ?)", (key, row[0]))
    return bytes.fromhex(row[0])


def drop_key_table(conn: sqlite3.Connection) -> None:
    """Drop the ``dedupe`` key table of earlier versions: an opened index holds its keys (the
    ledger and the quarantine say it all)."""
    conn.execute("DROP TABLE IF EXISTS dedupe")


def _rows(conn: sqlite3.Connection, refs: set[int]) -> dict[int, Row]:
    """The ledger and quarantine rows of candidate references."""
    out: dict[int, Row] = {}
    seqs = [r for r in refs if r > 0]
    if seqs:
        sql = (
            "SELECT seq, namespace, source, id, digest, received_us FROM events"
            " WHERE seq IN (SELECT value FROM json_each(?))"
        )
        for seq, ns, src, id_, digest, received in conn.execute(sql, (msgspec.json.encode(seqs).decode(),)):
            out[seq] = ((ns, src, id_), digest, received)
    qids = [-r for r in refs if r < 0]
    if qids:
        sql = (
            "SELECT id, namespace, source, event_id, digest, received_us FROM quarantine"
            " WHERE id IN (SELECT value FROM json_each(?))"
        )
        for qid, ns, src, id_, digest, received in conn.execute(sql, (msgspec.json.encode(qids).decode(),)):
            out[-qid] = ((ns, src, id_), digest, received)
    return out
