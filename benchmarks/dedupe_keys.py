"""Dedupe index with random ids: which exact index keeps ingest fast at 10M stored keys?

    ./run bench dedupe_keys [--keys 10000000] [--stages 0,1000000,5000000] [--duration 8]
        [--events 150000] [--seal-every 100000] [--fanout 4] [--partition-keys 100000]
        [--layouts n,a,b,c,i] [--ids random,sequential] [--dir DIR]

One SQLite file holds one ledger (today's ``events`` table: append-only by ``seq``) and the state
of three exact dedupe indexes over the key (namespace, source, id), all kept in step with the
ledger (each layout indexes every ledger row before every case). The database is seeded stage
by stage (0, 1M, 5M, then ``--keys`` ledger events with random UUIDv4 ids) and, at each stage,
every layout ingests 1000-event commits (WAL, synchronous=FULL, meterline's pragmas) for
``--duration`` seconds (at most ``--events`` events), once with new UUIDv4 ids and once with
sequential ids, each case in its own process (so its start is a real restart and its RSS is its
own):

- ``n``: the floor, not a dedupe: the same ledger rows and commits, no key check at all.
- ``a``: today's layout: ``dedupe`` WITHOUT ROWID, PRIMARY KEY (namespace, source, id), written
  in the ingest transaction beside the ledger row; one json_each lookup per batch.
- ``b``: LSM-style: the ledger row is the only durable write per event. New keys go into an
  in-memory table (keyed 64-bit BLAKE2b hash of the key -> seq) rebuilt from the ledger tail at
  start; every ``--seal-every`` keys it is sealed, in a background thread, into an immutable run
  file (hash-sorted int64 pairs, fsynced) with a Bloom filter; ``--fanout`` runs of one level are
  merged into one of the next (tiered compaction). A lookup checks the memory table, then the
  Bloom filters (vectorized over the batch), probes a run only on a Bloom hit, and confirms every
  hash hit by reading the ledger row by seq and comparing the full key.
- ``i``: the index meterline ships (``adapters.sqlite.dedupe_index``, its default sizes), driven
  as ingest drives it: ``lookup``, the ledger rows, ``add_many``, COMMIT, ``committed``. Like
  ``b`` without Bloom filters: each run is searched for the whole batch at once.
- ``c``: time-partitioned key tables: like ``b``, but each new (hash, seq) is also written in the
  ingest transaction into a small SQLite table (``--partition-keys`` keys each, then a new one);
  sealed partitions are probed only on a Bloom hit (filters stored in the database).

At the last stage ``b`` runs once more with a full merge of all its runs started beside ingest
(``b +compaction``): does a large compaction stall ingest?

Exactness is checked, not assumed: each batch carries known duplicates (old seeded keys, keys
from this run, a repeat inside the batch) and the accepted and duplicate counts must equal the
injected ones exactly; the ledger must grow by exactly the accepted count. A small check first
forces three different keys onto one 64-bit hash and checks that ``b`` and ``c`` keep them apart
(in memory, in a sealed run or partition, and after a restart).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from _common import code_version, machine, percentile

from meterline.adapters.sqlite.dedupe_index import DedupeIndex
from meterline.adapters.sqlite.schema import connect, create_schema
from meterline.domain.events.model import Event as LedgerEvent

NS = "default"
T0 = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z
DIGEST = bytes(16)
BATCH = 1000
LEDGER_INSERT = (
    "INSERT INTO events (seq, namespace, source, id, type, subject, time_us, received_us, digest, raw)"
    " VALUES (?,?,?,?,?,?,?,?,?,?)"
)

DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL, source TEXT NOT NULL, id TEXT NOT NULL,
    type TEXT NOT NULL, subject TEXT NOT NULL, time_us INTEGER NOT NULL,
    received_us INTEGER NOT NULL, digest BLOB NOT NULL, raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dedupe (
    namespace TEXT NOT NULL, source TEXT NOT NULL, id TEXT NOT NULL,
    seq INTEGER NOT NULL, digest BLOB NOT NULL, received_us INTEGER NOT NULL,
    PRIMARY KEY (namespace, source, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS c_blooms (part INTEGER PRIMARY KEY, n INTEGER NOT NULL, bits BLOB NOT NULL);
"""

Key = tuple[str, str, str]
Event = tuple[str, str, str, bytes]  # namespace, source, id, raw body
Hasher = Callable[[str, str, str], int]


# --- keys, events, hashing ------------------------------------------------------------------


def uuid4_ids(n: int) -> list[str]:
    """``n`` random UUIDv4 strings (version and variant bits set), faster than ``uuid.uuid4()``."""
    h = os.urandom(16 * n).hex()
    out = []
    for i in range(0, 32 * n, 32):
        s = h[i : i + 32]
        out.append(f"{s[:8]}-{s[8:12]}-4{s[13:16]}-{'89ab'[int(s[16], 16) & 3]}{s[17:20]}-{s[20:]}")
    return out


def event(source: str, id_: str) -> Event:
    raw = (
        f'{{"specversion":"1.0","id":"{id_}","source":"{source}","type":"t","subject":"acme",'
        f'"time":"2026-03-01T12:00:00Z","data":{{"v":1,"region":"eu-west-1"}}}}'
    ).encode()
    return (NS, source, id_, raw)


def ledger_row(seq: int, e: Event) -> tuple[Any, ...]:
    return (seq, e[0], e[1], e[2], "t", "acme", T0, T0, DIGEST, e[3])


def make_hasher(key: bytes) -> Hasher:
    """A keyed 64-bit BLAKE2b of the key (signed, as SQLite and numpy int64 store it). Keyed with
    a per-database secret, so that nobody can aim ids at one hash value on purpose."""
    keyed = hashlib.blake2b(digest_size=8, key=key)  # copying the keyed state: 1.1 µs a key, not 1.7

    def h(ns: str, src: str, id_: str) -> int:
        x = keyed.copy()
        x.update(f"{len(ns)}:{ns}{len(src)}:{src}{id_}".encode())
        return int.from_bytes(x.digest(), "little", signed=True)

    return h


def get_meta(conn: sqlite3.Connection, key: str, default: str) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else str(row[0])


def hash_key(conn: sqlite3.Connection) -> bytes:
    value = get_meta(conn, "hash_key", "")
    if not value:
        value = secrets.token_hex(16)
        conn.execute("INSERT INTO meta VALUES ('hash_key', ?)", (value,))
    return bytes.fromhex(value)


def max_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])


def ledger_chunks(conn: sqlite3.Connection, after: int, size: int) -> Iterator[list[tuple[int, str, str, str]]]:
    while True:
        rows = conn.execute(
            "SELECT seq, namespace, source, id FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, size)
        ).fetchall()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    got = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            got[line.split(":")[0]] = int(line.split()[1]) / 1024
    return got["VmRSS"], got["VmHWM"]


def durable_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- Bloom filter -----------------------------------------------------------------------------


class Bloom:
    """A Bloom filter over 64-bit hashes, checked for a whole batch per call (numpy).

    10 bits per key and 7 probes: ~0.8 % false positives. The probe positions come from the
    key's own (keyed, uniform) 64-bit hash by double hashing, so no second hash is computed."""

    K = 7
    BITS_PER_KEY = 10

    def __init__(self, bits: np.ndarray) -> None:
        self.bits = bits  # uint8
        self.m = np.uint64(len(bits) * 8)

    @classmethod
    def build(cls, hashes: np.ndarray) -> Bloom:
        bloom = cls(np.zeros(max(64, (len(hashes) * cls.BITS_PER_KEY + 7) // 8), dtype=np.uint8))
        for start in range(0, len(hashes), 200_000):  # bounded temporaries (~12 MB per array)
            pos = bloom._positions(hashes[start : start + 200_000]).ravel()
            np.bitwise_or.at(bloom.bits, pos >> np.uint64(3), np.left_shift(1, (pos & np.uint64(7))).astype(np.uint8))
        return bloom

    def _positions(self, hashes: np.ndarray) -> np.ndarray:
        u = hashes.astype(np.int64, copy=False).view(np.uint64)
        h1 = u & np.uint64(0xFFFFFFFF)
        h2 = (u >> np.uint64(32)) | np.uint64(1)
        i = np.arange(self.K, dtype=np.uint64)
        return (h1[:, None] + i[None, :] * h2[:, None]) % self.m  # type: ignore[no-any-return]

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        pos = self._positions(hashes)
        return ((self.bits[pos >> np.uint64(3)] >> (pos & np.uint64(7)).astype(np.uint8)) & 1).all(axis=1)  # type: ignore[no-any-return]


def mem_add(mem: dict[int, Any], h: int, seq: int) -> None:
    old = mem.get(h)
    if old is None:
        mem[h] = seq
    elif isinstance(old, list):
        old.append(seq)
    else:
        mem[h] = [old, seq]  # a 64-bit collision: both keys stay, each confirmed by the ledger


def mem_arrays(mem: dict[int, Any]) -> tuple[np.ndarray, np.ndarray]:
    n = len(mem)
    h = np.fromiter(mem.keys(), np.int64, n)
    s = np.fromiter((v if type(v) is int else v[0] for v in mem.values()), np.int64, n)
    extra = [(k, x) for k, v in mem.items() if type(v) is not int for x in v[1:]]
    if extra:
        h = np.concatenate([h, np.array([k for k, _ in extra], np.int64)])
        s = np.concatenate([s, np.array([x for _, x in extra], np.int64)])
    return h, s


# --- the layouts ----------------------------------------------------------------------------


class Index:
    name = ""

    def __init__(self, conn: sqlite3.Connection, workdir: Path, opts: Any, hasher: Hasher | None = None) -> None:
        self.conn = conn
        self.workdir = workdir
        self.opts = opts
        self.hasher = hasher or make_hasher(hash_key(conn))
        self.next_seq = max_seq(conn) + 1
        self.probes = 0  # run/partition probes after a Bloom hit
        self.t_lookup = 0.0  # seconds spent deciding new/duplicate (hashing, Bloom, probes, lookups)
        self.t_write = 0.0  # seconds spent writing and committing (fsync)
        self.confirms = 0  # ledger reads to confirm a 64-bit hash hit

    def open(self) -> None:
        """What a restart has to do before the first batch."""

    def catch_up(self) -> None:
        """Index every ledger row not indexed yet (seeding; not timed)."""

    def ingest(self, events: list[Event]) -> tuple[int, int]:
        """One 1000-event commit: (accepted, duplicates)."""
        raise NotImplementedError

    def close(self) -> None:
        """Wait for background work."""

    def info(self) -> dict[str, Any]:
        return {}

    def _ledger_key(self, seq: int) -> Key | None:
        self.confirms += 1
        row = self.conn.execute("SELECT namespace, source, id FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def _confirm(self, key: Key, found: Any) -> bool:
        for s in found if isinstance(found, list) else (found,):
            if self._ledger_key(int(s)) == key:
                return True
        return False


class KeyTable(Index):
    """(a) today: the key table written in the ingest transaction."""

    name = "a key table"
    LOOKUP = (
        "SELECT d.source, d.id FROM json_each(?) AS j CROSS JOIN dedupe AS d"
        " ON d.namespace = ? AND d.source = j.value ->> 0 AND d.id = j.value ->> 1"
    )

    def ingest(self, events: list[Event]) -> tuple[int, int]:
        conn = self.conn
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        keys = msgspec.json.encode([[e[1], e[2]] for e in events]).decode()
        known = set(conn.execute(self.LOOKUP, (keys, NS)).fetchall())
        seen: set[tuple[str, str]] = set()
        rows, drows = [], []
        seq = self.next_seq
        for e in events:
            k = (e[1], e[2])
            if k in known or k in seen:
                continue
            seen.add(k)
            rows.append(ledger_row(seq, e))
            drows.append((e[0], e[1], e[2], seq, DIGEST, T0))
            seq += 1
        t1 = time.perf_counter()
        conn.executemany(LEDGER_INSERT, rows)
        conn.executemany("INSERT INTO dedupe VALUES (?,?,?,?,?,?)", drows)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('a_to', ?)", (str(seq - 1),))
        conn.execute("COMMIT")
        self.t_lookup += t1 - t0
        self.t_write += time.perf_counter() - t1
        self.next_seq = seq
        return len(rows), len(events) - len(rows)

    def catch_up(self) -> None:
        to = int(get_meta(self.conn, "a_to", "0"))
        self.conn.execute("BEGIN")
        self.conn.execute(
            "INSERT INTO dedupe SELECT namespace, source, id, seq, digest, received_us FROM events"
            " WHERE seq > ? ORDER BY seq",
            (to,),
        )
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('a_to', ?)", (str(max_seq(self.conn)),))
        self.conn.execute("COMMIT")


class Run:
    """A sealed, immutable run: hash-sorted (hash, seq) pairs in a file, and its Bloom filter."""

    def __init__(self, path: Path, level: int) -> None:
        self.path = path
        self.level = level
        pairs = np.load(path, mmap_mode="r")
        self.h, self.seq = pairs[0], pairs[1]
        self.count = len(self.h)
        self.bloom = Bloom(np.load(path.with_suffix(".bloom.npy")))

    def find(self, h: int) -> list[int]:
        lo = int(np.searchsorted(self.h, h, "left"))
        out = []
        while lo < self.count and int(self.h[lo]) == h:
            out.append(int(self.seq[lo]))
            lo += 1
        return out


class LsmIndex(Index):
    """(b) the ledger is the only durable write; memory table + sealed hash-sorted runs."""

    name = "b lsm runs"

    def __init__(self, conn: sqlite3.Connection, workdir: Path, opts: Any, hasher: Hasher | None = None) -> None:
        super().__init__(conn, workdir, opts, hasher)
        self.dir = workdir / "lsm"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()  # the (runs, frozen) pair a batch reads, swapped as one
        self.write_lock = threading.Lock()  # one change of the run set at a time (seal, compaction)
        self.mem: dict[int, Any] = {}
        self.frozen: dict[int, Any] = {}
        self.runs: list[Run] = []
        self.sealed_to = 0
        self.next_run = 0
        self.sealer: threading.Thread | None = None
        self.seal_times: list[float] = []
        self.compact_times: list[tuple[int, float]] = []
        self.rebuilt = 0
        self.error: BaseException | None = None

    def _load_manifest(self) -> None:
        path = self.dir / "manifest.json"
        if path.exists():
            m = json.loads(path.read_text())
            self.sealed_to, self.next_run = m["sealed_to"], m["next_run"]
            self.runs = [Run(self.dir / name, level) for name, level in m["runs"]]

    def _save_manifest(self, runs: list[Run], sealed_to: int) -> None:
        body = {"sealed_to": sealed_to, "next_run": self.next_run, "runs": [[r.path.name, r.level] for r in runs]}
        path = self.dir / "manifest.json"
        tmp = path.with_name("manifest.json.tmp")
        with tmp.open("w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def open(self) -> None:
        self._load_manifest()
        mem: dict[int, Any] = {}
        hasher = self.hasher
        for seq, ns, src, id_ in self.conn.execute(
            "SELECT seq, namespace, source, id FROM events WHERE seq > ?", (self.sealed_to,)
        ):
            mem_add(mem, hasher(ns, src, id_), seq)
        self.mem = mem
        self.rebuilt = len(mem)

    def _write_run(self, h: np.ndarray, s: np.ndarray, level: int) -> Run:
        order = np.argsort(h, kind="stable")
        h, s = h[order], s[order]
        path = self.dir / f"run-{self.next_run:06d}.npy"
        self.next_run += 1
        durable_save(path, np.stack([h, s]))
        durable_save(path.with_suffix(".bloom.npy"), Bloom.build(h).bits)
        return Run(path, level)

    def catch_up(self) -> None:
        self._load_manifest()
        size = self.opts.seal_every
        hasher = self.hasher
        for rows in ledger_chunks(self.conn, self.sealed_to, size):
            if len(rows) < size:
                break  # the tail stays in the memory table (rebuilt at start)
            h = np.fromiter((hasher(ns, src, id_) for _, ns, src, id_ in rows), np.int64, len(rows))
            s = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            run = self._write_run(h, s, 0)
            self.runs = [*self.runs, run]
            self.sealed_to = rows[-1][0]
            self._save_manifest(self.runs, self.sealed_to)
            self._compact()

    def ingest(self, events: list[Event]) -> tuple[int, int]:
        if self.error is not None:
            raise RuntimeError("sealing failed") from self.error
        t0 = time.perf_counter()
        with self.lock:
            runs, frozen = self.runs, self.frozen
        mem, hasher = self.mem, self.hasher
        hs = [hasher(e[0], e[1], e[2]) for e in events]
        maybe: dict[int, list[Run]] = {}
        if runs:
            arr = np.array(hs, dtype=np.int64)
            for run in runs:
                for i in np.flatnonzero(run.bloom.contains(arr)).tolist():
                    maybe.setdefault(i, []).append(run)
        pending: set[Key] = set()
        rows = []
        seq = self.next_seq
        for i, e in enumerate(events):
            key = (e[0], e[1], e[2])
            if key in pending or self._known(key, hs[i], mem, frozen, maybe.get(i)):
                continue
            pending.add(key)
            mem_add(mem, hs[i], seq)
            rows.append(ledger_row(seq, e))
            seq += 1
        t1 = time.perf_counter()
        conn = self.conn
        conn.execute("BEGIN")
        conn.executemany(LEDGER_INSERT, rows)
        conn.execute("COMMIT")
        self.t_lookup += t1 - t0
        self.t_write += time.perf_counter() - t1
        self.next_seq = seq
        if len(mem) >= self.opts.seal_every and (self.sealer is None or not self.sealer.is_alive()):
            self._start_seal()
        return len(rows), len(events) - len(rows)

    def _known(self, key: Key, h: int, mem: dict[int, Any], frozen: dict[int, Any], runs: list[Run] | None) -> bool:
        found = mem.get(h)
        if found is not None and self._confirm(key, found):
            return True
        found = frozen.get(h)
        if found is not None and self._confirm(key, found):
            return True
        for run in runs or ():
            self.probes += 1
            seqs = run.find(h)
            if seqs and self._confirm(key, seqs):
                return True
        return False

    def _start_seal(self) -> None:
        with self.lock:
            self.frozen, self.mem = self.mem, {}
        self.sealer = threading.Thread(target=self._seal, args=(self.next_seq - 1,), daemon=True)
        self.sealer.start()

    def _seal(self, sealed_to: int) -> None:
        try:
            started = time.perf_counter()
            h, s = mem_arrays(self.frozen)
            with self.write_lock:
                run = self._write_run(h, s, 0)
                runs = [*self.runs, run]
                self._save_manifest(runs, sealed_to)  # the run is durable before the tail shrinks
                with self.lock:
                    self.runs, self.frozen, self.sealed_to = runs, {}, sealed_to
            self.seal_times.append(time.perf_counter() - started)
            self._compact()
        except BaseException as exc:
            self.error = exc

    def _compact(self, everything: bool = False) -> None:
        with self.write_lock:
            self._compact_locked(everything)

    def _compact_locked(self, everything: bool) -> None:
        while True:
            runs = self.runs
            levels: dict[int, list[Run]] = {}
            for r in runs:
                levels.setdefault(r.level, []).append(r)
            group = (
                runs
                if everything and len(runs) > 1
                else next((g[: self.opts.fanout] for g in levels.values() if len(g) >= self.opts.fanout), None)
            )
            if not group:
                return
            started = time.perf_counter()
            h = np.concatenate([r.h for r in group])
            s = np.concatenate([r.seq for r in group])
            new = self._write_run(h, s, max(r.level for r in group) + 1)
            left = [r for r in self.runs if r not in group] + [new]
            self._save_manifest(left, self.sealed_to)
            with self.lock:
                self.runs = left
            for r in group:  # a batch still probing the old run keeps its mapping
                r.path.unlink()
                r.path.with_suffix(".bloom.npy").unlink()
            self.compact_times.append((len(h), time.perf_counter() - started))
            if everything:
                return

    def compact_all(self) -> None:
        self._compact(everything=True)

    def close(self) -> None:
        if self.sealer is not None:
            self.sealer.join()
        if self.error is not None:
            raise RuntimeError("sealing failed") from self.error

    def info(self) -> dict[str, Any]:
        return {
            "runs": len(self.runs),
            "levels": sorted(r.level for r in self.runs),
            "bloom MB": sum(r.bloom.bits.nbytes for r in self.runs) / 2**20,
            "memtable keys": len(self.mem),
            "rebuilt": self.rebuilt,
            "seals": len(self.seal_times),
            "seal s": max(self.seal_times, default=0.0),
            "compactions": [[n, round(t, 3)] for n, t in self.compact_times],
        }


class PartitionedIndex(Index):
    """(c) time-partitioned (hash, seq) tables written per commit; Bloom filters for sealed ones."""

    name = "c time parts"

    def __init__(self, conn: sqlite3.Connection, workdir: Path, opts: Any, hasher: Hasher | None = None) -> None:
        super().__init__(conn, workdir, opts, hasher)
        self.part = 0
        self.active: dict[int, Any] = {}
        self.sealed: list[tuple[int, Bloom]] = []
        self.roll_times: list[float] = []

    def _load(self) -> None:
        self.part = int(get_meta(self.conn, "c_part", "0"))
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS kp_{self.part} (h INTEGER, seq INTEGER, PRIMARY KEY (h, seq)) WITHOUT ROWID"
        )
        self.sealed = [
            (part, Bloom(np.frombuffer(bits, dtype=np.uint8)))
            for part, bits in self.conn.execute("SELECT part, bits FROM c_blooms ORDER BY part")
        ]
        active: dict[int, Any] = {}
        for h, seq in self.conn.execute(f"SELECT h, seq FROM kp_{self.part}"):
            mem_add(active, h, seq)
        self.active = active

    def open(self) -> None:
        self._load()

    def _roll(self) -> None:
        started = time.perf_counter()
        h, _ = mem_arrays(self.active)
        bloom = Bloom.build(h)
        conn = self.conn
        conn.execute("BEGIN")
        conn.execute("INSERT INTO c_blooms VALUES (?,?,?)", (self.part, len(h), bloom.bits.tobytes()))
        self.part += 1
        conn.execute(f"CREATE TABLE kp_{self.part} (h INTEGER, seq INTEGER, PRIMARY KEY (h, seq)) WITHOUT ROWID")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('c_part', ?)", (str(self.part),))
        conn.execute("COMMIT")
        self.sealed.append((self.part - 1, bloom))
        self.active = {}
        self.roll_times.append(time.perf_counter() - started)

    def catch_up(self) -> None:
        self._load()
        to, size, hasher, conn = int(get_meta(self.conn, "c_to", "0")), self.opts.partition_keys, self.hasher, self.conn
        for rows in ledger_chunks(conn, to, size):
            while rows:
                take, rows = rows[: size - len(self.active)], rows[size - len(self.active) :]
                pairs = sorted((hasher(ns, src, id_), seq) for seq, ns, src, id_ in take)
                conn.execute("BEGIN")
                conn.executemany(f"INSERT INTO kp_{self.part} VALUES (?,?)", pairs)
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('c_to', ?)", (str(take[-1][0]),))
                conn.execute("COMMIT")
                for h, seq in pairs:
                    mem_add(self.active, h, seq)
                if len(self.active) >= size:
                    self._roll()

    def ingest(self, events: list[Event]) -> tuple[int, int]:
        t0 = time.perf_counter()
        active, hasher = self.active, self.hasher
        hs = [hasher(e[0], e[1], e[2]) for e in events]
        maybe: dict[int, list[int]] = {}
        if self.sealed:
            arr = np.array(hs, dtype=np.int64)
            for part, bloom in self.sealed:
                for i in np.flatnonzero(bloom.contains(arr)).tolist():
                    maybe.setdefault(i, []).append(part)
        pending: set[Key] = set()
        rows, keys = [], []
        seq = self.next_seq
        conn = self.conn
        conn.execute("BEGIN")
        for i, e in enumerate(events):
            key, h = (e[0], e[1], e[2]), hs[i]
            if key in pending:
                continue
            found = active.get(h)
            if found is not None and self._confirm(key, found):
                continue
            if any(self._in_part(key, part, h) for part in maybe.get(i, ())):
                continue
            pending.add(key)
            mem_add(active, h, seq)
            rows.append(ledger_row(seq, e))
            keys.append((h, seq))
            seq += 1
        t1 = time.perf_counter()
        conn.executemany(LEDGER_INSERT, rows)
        conn.executemany(f"INSERT INTO kp_{self.part} VALUES (?,?)", keys)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('c_to', ?)", (str(seq - 1),))
        conn.execute("COMMIT")
        self.t_lookup += t1 - t0
        self.t_write += time.perf_counter() - t1
        self.next_seq = seq
        if len(active) >= self.opts.partition_keys:
            self._roll()
        return len(rows), len(events) - len(rows)

    def _in_part(self, key: Key, part: int, h: int) -> bool:
        self.probes += 1
        seqs = [s for (s,) in self.conn.execute(f"SELECT seq FROM kp_{part} WHERE h = ?", (h,))]
        return bool(seqs) and self._confirm(key, seqs)

    def info(self) -> dict[str, Any]:
        return {
            "partitions": len(self.sealed) + 1,
            "bloom MB": sum(b.bits.nbytes for _, b in self.sealed) / 2**20,
            "active keys": len(self.active),
            "rolls": len(self.roll_times),
            "roll s": max(self.roll_times, default=0.0),
        }


class LedgerOnly(Index):
    """The floor, not a dedupe: the same ledger rows and commits with no key check at all (its
    batches carry no duplicates, so the ledger stays free of repeated keys)."""

    name = "- ledger only"

    def ingest(self, events: list[Event]) -> tuple[int, int]:
        t1 = time.perf_counter()
        rows = [ledger_row(self.next_seq + i, e) for i, e in enumerate(events)]
        self.conn.execute("BEGIN")
        self.conn.executemany(LEDGER_INSERT, rows)
        self.conn.execute("COMMIT")
        self.t_write += time.perf_counter() - t1
        self.next_seq += len(rows)
        return len(rows), 0


class ShippedIndex(Index):
    """(i) the dedupe index meterline ships (``adapters.sqlite.dedupe_index``), driven as ingest
    drives it: lookup, ledger rows, ``add_many``, COMMIT, ``committed``. Its default sizes."""

    name = "i shipped"

    def __init__(self, conn: sqlite3.Connection, workdir: Path, opts: Any, hasher: Hasher | None = None) -> None:
        super().__init__(conn, workdir, opts, hasher)
        create_schema(conn)  # its quarantine table
        seal = getattr(opts, "index_seal", None)
        self.index = DedupeIndex(workdir / "shipped", hasher=hasher, **({"seal_keys": seal} if seal else {}))

    def open(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.index.open(self.conn)
        self.conn.execute("COMMIT")

    def catch_up(self) -> None:
        self.open()  # indexes the ledger the sealed runs do not cover
        self.index.close()

    def ingest(self, events: list[Event]) -> tuple[int, int]:
        conn = self.conn
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        found = [LedgerEvent(e[0], e[1], e[2], "t", "acme", T0, None, e[3], DIGEST) for e in events]
        known = self.index.lookup(conn, found, -1)
        pending: set[tuple[str, str]] = set()
        rows, keys = [], []
        seq = self.next_seq
        for e in events:
            k = (e[1], e[2])
            if k in known or k in pending:
                continue
            pending.add(k)
            rows.append(ledger_row(seq, e))
            keys.append((e[0], e[1], e[2], seq, DIGEST, T0))
            seq += 1
        t1 = time.perf_counter()
        conn.executemany(LEDGER_INSERT, rows)
        self.index.add_many(keys)
        conn.execute("COMMIT")
        self.index.committed(seq - 1)
        self.t_lookup += t1 - t0
        self.t_write += time.perf_counter() - t1
        self.next_seq = seq
        return len(rows), len(events) - len(rows)

    def close(self) -> None:
        self.index.close()

    def info(self) -> dict[str, Any]:
        runs = self.index.runs()
        return {"runs": len(runs), "levels": self.index.levels(), "run MB": sum(r.count for r in runs) * 16 / 2**20}


LAYOUTS: dict[str, type[Index]] = {
    "n": LedgerOnly,
    "a": KeyTable,
    "b": LsmIndex,
    "c": PartitionedIndex,
    "i": ShippedIndex,
}


def new_db(path: Path, fsync: str = "full") -> sqlite3.Connection:
    conn = connect(path, fsync=fsync)
    conn.executescript(DDL)
    return conn


# --- the forced-collision check ---------------------------------------------------------------


def check_collisions(tmp: Path, opts: Any) -> None:
    """Two different keys with one 64-bit hash: never a false duplicate, never a missed one."""
    for name in ("b", "c", "i"):
        work = tmp / f"collide-{name}"
        work.mkdir()
        conn = new_db(work / "db.sqlite")
        real = make_hasher(hash_key(conn))

        def forced(ns: str, src: str, id_: str, real: Hasher = real) -> int:
            return 42 if id_.startswith("collide") else real(ns, src, id_)

        small = argparse.Namespace(**{**vars(opts), "seal_every": 2, "partition_keys": 2, "fanout": 2, "index_seal": 2})

        def fresh(small: Any = small, conn: sqlite3.Connection = conn, work: Path = work, name: str = name) -> Index:
            idx = LAYOUTS[name](conn, work, small, forced)
            idx.open()
            return idx

        k1, k2, k3, k4 = (event("s", f"collide-{i}") for i in range(1, 5))
        idx = fresh()
        steps: list[tuple[list[Event], tuple[int, int]]] = [
            ([k1], (1, 0)),  # new
            ([k2], (1, 0)),  # same hash, different key: must be accepted (in memory)
            ([k1, k2], (0, 2)),  # both duplicates
            ([k3, k3, event("s", "plain")], (2, 1)),  # a third colliding key; a repeat in the batch
        ]
        for batch, want in steps:
            got = idx.ingest(batch)
            assert got == want, f"{name}: {[e[2] for e in batch]} gave {got}, want {want}"
        idx.close()
        if isinstance(idx, LsmIndex):
            assert idx.runs, "b: the colliding keys were not sealed into a run"
            idx.compact_all()
        if isinstance(idx, ShippedIndex):
            assert idx.index.runs(), "i: the colliding keys were not sealed into a run"
        idx = fresh()  # a restart: the colliding keys now sit in sealed runs / partitions
        for batch, want in [([k1, k2, k3], (0, 3)), ([k4], (1, 0)), ([k4, k1], (0, 2))]:
            got = idx.ingest(batch)
            assert got == want, f"{name} after restart: {[e[2] for e in batch]} gave {got}, want {want}"
        idx.close()
        conn.close()
    print("forced 64-bit collision check (b, c, i: in memory, sealed, after restart): exact")


# --- one case, in its own process ----------------------------------------------------------------


def worker(opts: Any) -> None:
    conn = connect(Path(opts.db))
    random.seed()
    started = time.perf_counter()
    idx = LAYOUTS[opts.worker](conn, Path(opts.workdir), opts)
    idx.open()
    restart_s = time.perf_counter() - started
    rss_open, _ = rss_mb()
    start_seq = idx.next_seq - 1
    old_pool: list[Key] = []
    if start_seq:
        for seq in random.sample(range(1, start_seq + 1), min(3000, start_seq)):
            row = conn.execute("SELECT namespace, source, id FROM events WHERE seq = ?", (seq,)).fetchone()
            old_pool.append((row[0], row[1], row[2]))
    tag = secrets.token_hex(4)
    counter = 0
    accepted_keys: list[Key] = []
    want_acc = want_dup = got_acc = got_dup = 0
    latencies: list[float] = []
    compactor: threading.Thread | None = None
    if opts.compact_during and isinstance(idx, LsmIndex):
        compactor = threading.Thread(target=idx.compact_all)
        compactor.start()
    deadline = time.monotonic() + opts.duration
    floor = isinstance(idx, LedgerOnly)
    while time.monotonic() < deadline and got_acc + got_dup < opts.events:
        n_old = 5 if old_pool and not floor else 0
        n_recent = 5 if len(accepted_keys) >= 5 and not floor else 0
        n_repeat = 0 if floor else 1
        n_fresh = BATCH - n_old - n_recent - n_repeat
        if opts.ids == "random":
            fresh = [event("web", i) for i in uuid4_ids(n_fresh)]
        else:
            fresh = [event("seq", f"{tag}-{counter + j:012d}") for j in range(n_fresh)]
            counter += n_fresh
        dups = [event(k[1], k[2]) for k in random.sample(old_pool, n_old)]
        dups += [event(k[1], k[2]) for k in random.sample(accepted_keys[-100_000:], n_recent)]
        batch = fresh + dups + fresh[:n_repeat]
        random.shuffle(batch)
        t = time.perf_counter()
        acc, dup = idx.ingest(batch)
        latencies.append(time.perf_counter() - t)
        got_acc += acc
        got_dup += dup
        want_acc += n_fresh
        want_dup += n_old + n_recent + n_repeat
        accepted_keys.extend((e[0], e[1], e[2]) for e in fresh)
    elapsed = sum(latencies)
    probes = idx.probes  # before the duplicate-only batches below
    compact_s = 0.0
    if compactor is not None:
        t = time.perf_counter()
        compactor.join()
        compact_s = time.perf_counter() - t  # left over after the ingest loop
    grown = max_seq(conn) - start_seq

    def dup_cost(keys: list[Key]) -> float:
        if not keys or floor:
            return float("nan")
        t = time.perf_counter()
        acc, dup = idx.ingest([event(k[1], k[2]) for k in keys])
        cost = (time.perf_counter() - t) / len(keys) * 1e6
        assert (acc, dup) == (0, len(keys)), f"true duplicates gave accepted={acc} duplicates={dup}"
        return cost

    recent_us = dup_cost(accepted_keys[-BATCH:])
    old_us = dup_cost(random.sample(old_pool, min(BATCH, len(old_pool))))
    idx.close()
    rss_end, hwm = rss_mb()
    latencies.sort()
    print(
        json.dumps(
            {
                "stored": start_seq,
                "events/s": (got_acc + got_dup) / elapsed if elapsed else 0.0,
                "p50": percentile(latencies, 50) * 1000,
                "p99": percentile(latencies, 99) * 1000,
                "max": latencies[-1] * 1000 if latencies else 0.0,
                "recent us": recent_us,
                "old us": old_us,
                "restart s": restart_s,
                "rss open": rss_open,
                "rss end": rss_end,
                "hwm": hwm,
                "probes/ev": probes / max(1, got_acc + got_dup),
                "lookup us": idx.t_lookup / max(1, got_acc + got_dup) * 1e6,
                "write us": idx.t_write / max(1, got_acc + got_dup) * 1e6,
                "exact": got_acc == want_acc and got_dup == want_dup and grown == got_acc,
                "counts": [got_acc, want_acc, got_dup, want_dup, grown],
                "compact wait s": compact_s,
                **idx.info(),
            }
        )
    )


# --- orchestration -------------------------------------------------------------------------------


def seed_ledger(conn: sqlite3.Connection, target: int) -> None:
    seq = max_seq(conn)
    while seq < target:
        conn.execute("BEGIN")
        end = min(target, seq + 1_000_000)
        while seq < end:
            n = min(100_000, end - seq)
            conn.executemany(
                LEDGER_INSERT, [ledger_row(seq + 1 + j, event("web", i)) for j, i in enumerate(uuid4_ids(n))]
            )
            seq += n
        conn.execute("COMMIT")


def run_worker(opts: Any, layout: str, ids: str, db: Path, work: Path, compact_during: bool) -> dict[str, Any]:
    args = [
        sys.executable, __file__, "--worker", layout, "--ids", ids, "--db", str(db), "--workdir", str(work),
        "--duration", str(opts.duration), "--events", str(opts.events), "--seal-every", str(opts.seal_every),
        "--fanout", str(opts.fanout), "--partition-keys", str(opts.partition_keys),
    ]  # fmt: skip
    if compact_during:
        args.append("--compact-during")
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"case {layout}/{ids} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=10_000_000, help="stored keys at the last stage")
    parser.add_argument("--stages", default="0,1000000,5000000", help="earlier stages (stored keys)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of ingest per case")
    parser.add_argument("--events", type=int, default=150_000, help="at most this many events per case")
    parser.add_argument("--seal-every", type=int, default=100_000, help="b: keys in memory before a seal")
    parser.add_argument("--fanout", type=int, default=4, help="b: runs of one level merged together")
    parser.add_argument("--partition-keys", type=int, default=100_000, help="c: keys per partition table")
    parser.add_argument("--layouts", default="n,a,b,c", help="n is the ledger-only floor (no dedupe)")
    parser.add_argument("--ids", default="random,sequential")
    parser.add_argument("--dir", default=None, help="where the temporary database goes")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--db", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compact-during", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        worker(opts)
        return
    print(f"{code_version()}; {machine()}")
    stages = sorted({int(s) for s in opts.stages.split(",") if s} | {opts.keys})
    layouts, id_modes = opts.layouts.split(","), opts.ids.split(",")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(dir=opts.dir) as tmp_name:
        tmp = Path(tmp_name)
        check_collisions(tmp, opts)
        db, work = tmp / "keys.sqlite", tmp / "work"
        work.mkdir()
        seeder = new_db(db, fsync="normal")
        seeder.execute("PRAGMA cache_size=-4000000")  # bulk seeding only: the whole key table in cache
        hash_key(seeder)
        cols = ["events/s", "p50", "p99", "max", "lookup us", "write us", "recent us", "old us", "probes/ev"]
        cols += ["restart s", "rss open", "hwm"]
        print(f"{'stored':>10} {'layout':<13} {'ids':<10} " + " ".join(f"{c:>9}" for c in cols) + "  exact  index")
        for stage in stages:
            t = time.monotonic()
            seed_ledger(seeder, stage)
            seeded = time.monotonic() - t
            timings = []
            for name in layouts:  # every layout indexes every ledger row, before every case
                t = time.monotonic()
                LAYOUTS[name](seeder, work, opts).catch_up()
                timings.append(f"{name} {time.monotonic() - t:.1f} s")
            seeder.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            print(
                f"-- stage {stage:,}: ledger seeded in {seeded:.1f} s; indexes caught up: {', '.join(timings)}",
                flush=True,
            )
            cases = [(name, ids, False) for ids in id_modes for name in layouts]
            if stage == stages[-1] and "b" in layouts:  # b again, with a full compaction running beside
                cases.append(("b", id_modes[0], True))
            for name, ids, compact in cases:
                for other in layouts:
                    LAYOUTS[other](seeder, work, opts).catch_up()
                r = run_worker(opts, name, ids, db, work, compact_during=compact)
                extra = {k: v for k, v in r.items() if k not in cols and k not in ("stored", "exact")}
                formats = {"events/s": ">9,.0f", "probes/ev": ">9.3f"}
                cells = " ".join(f"{r[c]:{formats.get(c, '>9.2f')}}" for c in cols)
                exact = "n/a" if name == "n" else "yes" if r["exact"] else "NO"
                label = "b +compaction" if compact else LAYOUTS[name].name
                head = f"{r['stored']:>10,} {label:<13} {ids:<10}"
                print(f"{head} {cells}  {exact}  {json.dumps(extra)}", flush=True)
                if not r["exact"] and name != "n":
                    raise SystemExit(f"inexact dedupe in {name}/{ids}: {r['counts']}")
            size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 2**30
            print(f"-- {time.monotonic() - began:.0f} s so far; files {size:.2f} GB", flush=True)
        seeder.close()


if __name__ == "__main__":
    main()
