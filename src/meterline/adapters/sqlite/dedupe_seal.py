"""The dedupe index's memory tables, and the background work that turns them into sealed runs.

Sealing and merging each run on a thread of their own and never block a lookup or each other for
longer than one swap of the run list; a change of the run set commits through the manifest
(``dedupe_runs``) before the in-memory list changes, and input runs are deleted only after the
manifest no longer lists them. Merges are size-tiered: ``fanout`` runs of one size class become
one run of the next, read and written ``MERGE_CHUNK`` entries at a time.

A failed seal (a disk error) keeps its table frozen — still looked up — and is tried again after
a later commit; a failed merge leaves its inputs live. Neither loses a key: the ledger after
``sealed_to`` is indexed again at the next open.
"""

from __future__ import annotations

import logging
import threading
from array import array
from collections.abc import Callable

import numpy as np

from meterline.adapters.sqlite.dedupe_runs import Array, Manifest, Run, RunStore

log = logging.getLogger("meterline.dedupe")


class Table:
    """Hash -> candidate references (a seq, or -quarantine id); most hashes hold one.

    Every reference put is also appended to two flat int64 arrays, so sealing copies two buffers
    instead of walking the dict while holding the GIL (which would stall ingest for the walk)."""

    __slots__ = ("_d", "_h", "_n", "_r", "max_received_us")

    def __init__(self) -> None:
        self._d: dict[int, int | list[int]] = {}
        self._h, self._r = array("q"), array("q")
        self._n = 0  # references held
        self.max_received_us = 0

    def __len__(self) -> int:
        return self._n

    def get(self, h: int) -> list[int]:
        found = self._d.get(h)
        return [] if found is None else [found] if isinstance(found, int) else found

    def put(self, h: int, ref: int, received_us: int) -> None:
        found = self._d.get(h)
        if found is None:
            self._d[h] = ref
        elif isinstance(found, int):
            self._d[h] = [found, ref]  # a second key on this hash (or the same key after expiry)
        else:
            found.append(ref)
        self._n += 1
        self._h.append(h)
        self._r.append(ref)
        if received_us > self.max_received_us:
            self.max_received_us = received_us

    def drop(self, h: int, ref: int) -> int:
        """Remove one reference; 1 when that left the hash with none (a key is gone), else 0."""
        found = self._d.get(h)
        if found == ref:
            del self._d[h]
            self._n -= 1
            return 1
        if isinstance(found, list) and ref in found:
            found.remove(ref)
            self._n -= 1
            if len(found) == 1:
                self._d[h] = found[0]
        return 0

    def refs(self) -> list[int]:
        return [r for v in self._d.values() for r in ([v] if isinstance(v, int) else v)]

    def arrays(self) -> tuple[Array, Array]:
        """(hashes, references) of every reference put, in order. A dropped one is still there:
        it was dropped because it expired, and an expired reference never makes a duplicate."""
        return np.frombuffer(self._h, np.int64).copy(), np.frombuffer(self._r, np.int64).copy()


def level_of(count: int, seal_keys: int, fanout: int = 4) -> int:
    """The size class of a run: 0 below ``seal_keys * fanout`` keys, then one per factor ``fanout``."""
    level, size = 0, seal_keys * fanout
    while count >= size:
        level, size = level + 1, size * fanout
    return level


class Sealer:
    """The run list, the frozen table, and the threads that seal and merge."""

    def __init__(self, store: RunStore, lock: threading.Lock, seal_keys: int, fanout: int) -> None:
        self._store = store
        self._lock = lock  # the index's lock: the run list and the tables change under it
        self._manifest = threading.Lock()  # one change of the run set at a time
        self._seal_keys, self._fanout = seal_keys, fanout
        self.frozen = Table()
        self.runs: tuple[Run, ...] = ()
        self.sealed_to = 0
        self._sealed_hash = 0
        self._key_id = ""
        self._pending = (0, 0)  # (sealed_to, hash) of the frozen table
        self._sealing: threading.Thread | None = None
        self._merging: threading.Thread | None = None

    def reset(self, key_id: str, manifest: Manifest | None) -> None:
        self._key_id = key_id
        if manifest is not None:
            self.runs, self.sealed_to, self._sealed_hash = manifest.runs, manifest.sealed_to, manifest.sealed_hash

    def seal_now(self, hashes: Array, seqs: Array, newest_us: int, sealed_to: int, sealed_hash: int) -> None:
        """Seal on this thread (indexing the ledger at open)."""
        self._commit_seal(self._store.write(hashes, seqs, newest_us), sealed_to, sealed_hash)

    def _commit_seal(self, run: Run | None, sealed_to: int, sealed_hash: int) -> None:
        with self._manifest:
            runs = self.runs if run is None else (*self.runs, run)
            self._store.commit(runs, sealed_to, sealed_hash, self._key_id)
            with self._lock:
                self.runs, self.frozen = runs, Table()
                self.sealed_to, self._sealed_hash = sealed_to, sealed_hash

    def idle(self) -> bool:
        """Whether a new table may be frozen; retries a seal that failed."""
        if self._sealing is not None and self._sealing.is_alive():
            return False
        if len(self.frozen):
            self._start(self._seal)
            return False
        return True

    def seal_soon(self, table: Table, sealed_to: int, sealed_hash: int) -> None:
        """Seal ``table`` (every committed ledger event up to ``sealed_to``) in the background."""
        with self._lock:
            self.frozen = table
        self._pending = (sealed_to, sealed_hash)
        self._start(self._seal)

    def _start(self, target: Callable[[], None]) -> None:
        sealing = target == self._seal
        thread = threading.Thread(target=target, name="dedupe-seal" if sealing else "dedupe-merge", daemon=True)
        if sealing:
            self._sealing = thread
        else:
            self._merging = thread
        thread.start()

    def _seal(self) -> None:
        try:
            table = self.frozen
            hashes, seqs = table.arrays()
            run = self._store.write(hashes, seqs, table.max_received_us) if len(hashes) else None
            self._commit_seal(run, *self._pending)
        except Exception:
            log.exception("sealing the dedupe index failed; it is tried again after the next commit")
            return
        self.merge_soon()

    def merge_soon(self) -> None:
        if self._group() and (self._merging is None or not self._merging.is_alive()):
            self._start(self._merge)

    def _group(self) -> list[Run]:
        by_level: dict[int, list[Run]] = {}
        for run in sorted(self.runs, key=lambda r: r.count):
            by_level.setdefault(level_of(run.count, self._seal_keys, self._fanout), []).append(run)
        return next((runs[: self._fanout] for _, runs in sorted(by_level.items()) if len(runs) >= self._fanout), [])

    def _merge(self) -> None:
        try:
            while group := self._group():
                self._merge_one(group)
        except Exception:
            log.exception("merging dedupe index runs failed; the runs stay as they are")

    def _merge_one(self, group: list[Run]) -> None:
        merged = self._store.merge(group)
        with self._manifest:
            if any(run not in self.runs for run in group):  # expired meanwhile: drop the result
                self._store.delete([merged])
                return
            runs = (*(r for r in self.runs if r not in group), merged)
            self._store.commit(runs, self.sealed_to, self._sealed_hash, self._key_id)
            with self._lock:
                self.runs = runs
        self._store.delete(group)

    def expire(self, floor_us: int) -> int:
        """Delete the runs whose every key was received before ``floor_us``; their key count."""
        with self._manifest:
            dead = [r for r in self.runs if r.max_received_us < floor_us]
            if not dead:
                return 0
            runs = tuple(r for r in self.runs if r not in dead)
            self._store.commit(runs, self.sealed_to, self._sealed_hash, self._key_id)
            with self._lock:
                self.runs = runs
        self._store.delete(dead)
        return sum(r.count for r in dead)

    def wait(self) -> None:
        while True:
            threads = [t for t in (self._sealing, self._merging) if t is not None and t.is_alive()]
            if not threads:
                return
            for thread in threads:
                thread.join()

    def close(self) -> None:
        self.wait()
