"""Sealed runs of the dedupe index: immutable, hash-sorted files and the manifest that lists them.

A run is two files of little-endian int64 values, ``<name>.h`` (64-bit key hashes, sorted) and
``<name>.s`` (the ledger seq of each), memory-mapped for reading. ``manifest.json`` lists the live
runs and ``sealed_to``: the keys of every ledger event up to that seq are in the listed runs.

Durability, step by step (a crash at any point leaves a consistent index):

1. a new run's files get a name never listed before; they are written, fsynced, and the
   directory is fsynced;
2. the manifest is written to a temporary file, fsynced, renamed over the old one, and the
   directory fsynced: the rename is the commit point;
3. runs no longer listed are deleted only after that.

A crash before step 2 leaves the previous manifest and its runs untouched; files it does not list
(a half-written run, a merge output, a merge input already replaced) are deleted at the next
:meth:`RunStore.load`. Everything after ``sealed_to`` is rebuilt from the ledger by the index.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

I64 = np.dtype("<i8")
Array = npt.NDArray[np.int64]
MANIFEST = "manifest.json"
LOCK = "LOCK"  # held (flock) by the one process that may change the runs
MERGE_CHUNK = 262_144  # entries taken from each input run per merge step: bounded memory


@dataclass(frozen=True, eq=False)
class Run:
    """One sealed run, memory-mapped."""

    name: str
    count: int
    max_received_us: int  # the newest receipt time of its keys: the run expires after it
    hashes: Array
    seqs: Array

    def find(self, probe: Array) -> list[tuple[int, int]]:
        """(position in ``probe``, seq) of every entry whose hash equals one of ``probe``."""
        pos = np.searchsorted(self.hashes, probe)
        hit = np.flatnonzero(self.hashes[np.minimum(pos, self.count - 1)] == probe)
        found = []
        for i in hit.tolist():
            j, h = int(pos[i]), probe[i]
            while j < self.count and self.hashes[j] == h:  # equal hashes: every one is a candidate
                found.append((i, int(self.seqs[j])))
                j += 1
        return found


@dataclass(frozen=True)
class Manifest:
    sealed_to: int  # the keys of ledger events up to this seq are in the runs
    sealed_hash: int  # the hash of the key of event ``sealed_to``: detects a ledger that changed
    runs: tuple[Run, ...]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunStore:
    """The run files and the manifest of one index directory. ``crash_point`` is called at each
    step of a change (tests kill the process there)."""

    def __init__(self, directory: Path, crash_point: Callable[[str], None] | None = None) -> None:
        self.dir = directory
        self._crash_point = crash_point or (lambda step: None)
        self._names = itertools.count()
        self._lock_fd: int | None = None
        self.owner = False
        """Whether this process may change the runs. Another process that opens the same data
        directory (an offline command beside a running server) only reads them."""

    def load(self, key_id: str) -> Manifest | None:
        """The committed manifest (None when missing, written for another hash key, or naming a
        file that is missing or short); as the owner, files it does not list are deleted."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.owner = self._lock()
        body = self._read_manifest()
        if body is None or body.get("key_id") != key_id:
            body = None
        try:
            runs = tuple(self._open(r["name"], r["count"], r["max_received_us"]) for r in body["runs"]) if body else ()
        except (OSError, ValueError):
            body, runs = None, ()  # damaged: the index is built again from the ledger
        if self.owner:
            self._remove_unlisted({r.name for r in runs})
        return None if body is None else Manifest(body["sealed_to"], body["sealed_hash"], runs)

    def _lock(self) -> bool:
        if self._lock_fd is None:
            self._lock_fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _remove_unlisted(self, listed: set[str]) -> None:
        for path in self.dir.iterdir():
            if path.name not in (MANIFEST, LOCK) and path.name.split(".")[0] not in listed:
                path.unlink()
        numbers = [int(p.name[4:12]) for p in self.dir.glob("run-*.h")]
        self._names = itertools.count(max(numbers, default=-1) + 1)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd, self.owner = None, False

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            body = json.loads((self.dir / MANIFEST).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    def _open(self, name: str, count: int, max_received_us: int) -> Run:
        for suffix in (".h", ".s"):
            if (self.dir / f"{name}{suffix}").stat().st_size != count * I64.itemsize:
                raise ValueError(f"run {name} is not {count} entries long")
        hashes = np.memmap(self.dir / f"{name}.h", dtype=I64, mode="r", shape=(count,))
        seqs = np.memmap(self.dir / f"{name}.s", dtype=I64, mode="r", shape=(count,))
        return Run(name, count, max_received_us, hashes, seqs)

    def write(self, hashes: Array, seqs: Array, max_received_us: int) -> Run:
        """A new run of unsorted pairs (step 1); not live until a manifest lists it."""
        order = np.argsort(hashes, kind="stable")
        return self._write_sorted([(hashes[order], seqs[order])], max_received_us)

    def merge(self, runs: Sequence[Run]) -> Run:
        """One run holding every entry of ``runs`` (step 1), merged in bounded memory."""
        return self._write_sorted(_merged(runs), max(r.max_received_us for r in runs))

    def _write_sorted(self, chunks: Iterable[tuple[Array, Array]], max_received_us: int) -> Run:
        name = f"run-{next(self._names):08d}"  # atomic: seals and merges name runs concurrently
        count = 0
        with open(self.dir / f"{name}.h", "wb") as fh, open(self.dir / f"{name}.s", "wb") as fs:
            for h, s in chunks:
                fh.write(h.astype(I64, copy=False).tobytes())
                fs.write(s.astype(I64, copy=False).tobytes())
                count += len(h)
            for f in (fh, fs):
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(self.dir)
        self._crash_point("run-written")
        return self._open(name, count, max_received_us)

    def commit(self, runs: Sequence[Run], sealed_to: int, sealed_hash: int, key_id: str) -> None:
        """Make ``runs`` the live set (step 2)."""
        body = {
            "key_id": key_id,
            "sealed_to": sealed_to,
            "sealed_hash": sealed_hash,
            "runs": [{"name": r.name, "count": r.count, "max_received_us": r.max_received_us} for r in runs],
        }
        tmp = self.dir / f"{MANIFEST}.tmp"
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        self._crash_point("manifest-written")
        os.replace(tmp, self.dir / MANIFEST)
        fsync_dir(self.dir)
        self._crash_point("manifest-committed")

    def delete(self, runs: Sequence[Run]) -> None:
        """Remove runs no manifest lists any more (step 3). A lookup still holding one keeps its
        mapping until it is done."""
        for run in runs:
            for suffix in (".h", ".s"):
                (self.dir / f"{run.name}{suffix}").unlink(missing_ok=True)


def _merged(runs: Sequence[Run]) -> Iterator[tuple[Array, Array]]:
    """The entries of sorted runs in hash order, ``MERGE_CHUNK`` entries of each at a time.

    Each step takes, from every run, the entries up to ``cut``: the smallest last hash among the
    chunks of runs that have more after their chunk. No entry left behind is smaller than
    ``cut``, so the step's output follows everything written before it."""
    pos = [0] * len(runs)
    while any(p < r.count for p, r in zip(pos, runs, strict=True)):
        ends = [min(p + MERGE_CHUNK, r.count) for p, r in zip(pos, runs, strict=True)]
        more = [r.hashes[e - 1] for e, r in zip(ends, runs, strict=True) if e < r.count]
        if more:
            cut = min(more)
            ends = [
                p + int(np.searchsorted(r.hashes[p:e], cut, "right")) for p, e, r in zip(pos, ends, runs, strict=True)
            ]
        h = np.concatenate([r.hashes[p:e] for p, e, r in zip(pos, ends, runs, strict=True)])
        s = np.concatenate([r.seqs[p:e] for p, e, r in zip(pos, ends, runs, strict=True)])
        order = np.argsort(h, kind="stable")
        pos = ends
        yield h[order], s[order]
