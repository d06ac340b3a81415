"""Erasure of a subject in scale mode (``ports.erasure.Erasures`` over a partitioned log,
the usage store and the catalog; rules in ``domain.erasure``, steps in docs/erasure.md).

1. **Caught up**: wait, at most ``max_wait``, until the sink workers have applied every
   partition up to the log's end when the request came (the topic's high watermarks and this
   node's own acknowledged offsets): events of the subject acknowledged before the request are
   in the usage store. Else 503, nothing erased.
2. **Held**: the workers are held off (the fence's maintenance hold, as ``meterline rebuild``
   takes it; API nodes go on acknowledging events into the log) and batches in flight are
   waited for; ``through`` is then each partition's applied position, and nothing moves in the
   usage store until the hold ends. A range left unfinished by a refused write makes the
   erasure release, let the workers finish it, and try again.
3. The subject's stored entries and every other version of their keys are read and their
   erased forms computed (nothing erased yet: ``erasure_unsafe`` stops here); nothing refers
   to the subject: ``subject_not_found``.
4. **Catalog** (one transaction): audit record, erased entries by log place (what the workers
   write instead of those records whenever they read them again), dedupe keys, correction
   journal, quarantined events, dead letters, portal tokens. A dedupe store outside the
   catalog (Redis, ``ErasableKeys``) then marks the keys in it erased (a repeat marks none).
5. **Usage store, copy**: erased entries and the usage moved to the pseudonym inserted.
6. **Catalog, switch** (one transaction): the customers map the pseudonym instead of the subject.
7. **Usage store, drop**: the original entries and the subject's usage rows deleted.
8. The live usage counters (if any) move the subject's to the pseudonym. A store outside the
   catalog whose own files may still hold what it replaced (Redis's AOF and snapshot,
   ``RewritableFiles``) rewrites them (bounded wait; the outcome, whatever it is, goes into
   the record); the record is finished (it forgets the subject); the hold ends.
9. **Catalog files** (``CatalogFiles``, the workers no longer held): the catalog's tables the
   erasure changed are rewritten, so their files keep no old version of a row it deleted or
   changed (the record's own versions that held the subject included). Each table waits at
   most ``lock_timeout`` for its lock and is tried ``attempts`` times, the pause doubling from
   ``backoff``; the outcome per table goes into the record and the log. A table left busy is
   a ``problem`` (a ``/readyz`` warning) and the erasure stays due: every later ``resume``
   tries again, until all are rewritten (``Step.REWRITTEN``).

The record also says how long the log may still hold the subject's records (``log_kept``: the
topic's retention, read before the hold; records are immutable and leave only with retention).

Between 5 and 7 the subject's usage is in the store twice, under the subject and the
pseudonym; no usage read answers from that state (``ErasureGate``): a read done while an
erasure is unfinished is done again once it is finished (waiting at most ``max_wait``, then
``erasure_in_progress``, 503).

From step 4's commit until the record is finished the erasure is *unfinished*: the catalog
keeps the subject and the last step done, and holds every worker off whatever happens to this
process (the fence gives no epoch meanwhile). A process that dies (or a step that fails) leaves
it so; ``resume`` (every API node, every few seconds, and every erasure request first) takes
the maintenance hold and does the steps after the one recorded. Nothing moved in the usage
store meanwhile, so each repeated step finds what it left: inserts under the same tokens insert
the same rows once, deletes and the switch find nothing left, keys marked are not marked again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from meterline.domain.erasure import (
    ErasureRecord,
    ErasureRequest,
    erased_id,
    erased_raw,
    erased_void_raw,
    pseudonym,
    subject_not_found,
)
from meterline.domain.errors import ErasureInProgress, StorageUnavailable
from meterline.domain.events.corrections import is_void_record
from meterline.domain.integrity.batches import entry_digest
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.model import Meter
from meterline.ports.erasure import (
    CatalogFiles,
    ErasableKeys,
    ErasableStore,
    ErasedEntry,
    ErasedKey,
    ErasureCatalog,
    RewritableFiles,
    Step,
    StoredVersion,
    TableRewriter,
    UnfinishedErasure,
)

log = logging.getLogger("meterline.erasure")
ATTEMPTS = 3
SETTLE_HELD = 5.0
"""How long the erasure, holding the workers off, waits for the batches in flight to finish."""
SETTLE_RELEASED = 30.0
"""How long it waits, having released them, for the workers to finish a range a refused write left."""
MoveCounters = Callable[[Sequence[int], str, str], int]
T = TypeVar("T")


class ErasureGate:
    """Usage reads that never answer from a state an unfinished erasure left (its copies and
    the originals side by side, between steps 5 and 7 of the module doc).

    ``state``: the catalog's newest erasure id and whether one is unfinished (one round trip).
    A read is answered when the state observed before it (by any read of this node, or looked
    up when that one showed an unfinished erasure) and the state looked up after it are equal
    and show none unfinished: an erasure is unfinished from before its first write to the
    usage store until after its last, and every erasure that begins gets a new id (a finished
    one is never taken up again), so no erasure wrote while the read ran. Otherwise the read
    waits until none is unfinished and is done again; after ``max_wait`` seconds (from the
    read's start) it raises ``ErasureInProgress``. One round trip per read when no erasure
    runs; a read inside a read (a reader that calls another) adds none."""

    def __init__(self, state: Callable[[], tuple[int, bool]], max_wait: float, pause: float = 0.05) -> None:
        self._state = state
        self._max_wait = max_wait
        self._pause = pause
        self._seen: tuple[int, bool] | None = None
        self._inside = threading.local()

    def read(self, read: Callable[[], T]) -> T:
        if getattr(self._inside, "depth", 0):
            return read()  # the outer read's checks cover it
        deadline = time.monotonic() + self._max_wait
        seen = self._seen if self._seen is not None else self._look()
        while True:
            while seen[1]:
                if time.monotonic() >= deadline:
                    raise _in_progress()
                time.sleep(self._pause)
                seen = self._look()
            self._inside.depth = 1
            try:
                answer = read()
            finally:
                self._inside.depth = 0
            after = self._look()
            if after == seen:
                return answer
            if time.monotonic() >= deadline:
                raise _in_progress()
            seen = after  # an erasure began meanwhile: wait for it, then read again

    def _look(self) -> tuple[int, bool]:
        seen = self._state()
        self._seen = seen
        return seen


class LogErasures:
    def __init__(
        self,
        catalog: ErasureCatalog,
        store: ErasableStore,
        meters: Callable[[], Sequence[Meter]],
        *,
        heads: Callable[[], dict[int, int]],
        applied: Callable[[], dict[int, int]],
        hold: Callable[[bool], AbstractContextManager[bool]],
        unfinished: Callable[[float], list[str]],
        max_wait: float,
        counters: MoveCounters | None = None,
        keys: ErasableKeys | None = None,
        log_kept: Callable[[], int | None] | None = None,
        files: RewritableFiles | None = None,
        files_wait: float = 30.0,
        tables: CatalogFiles | None = None,
        rewrite: RewriteSettings | None = None,
        pause: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``heads``: per partition, the offset after the log's last record now; ``applied``:
        how far the workers applied each; ``hold(wait)``: the workers held off for the block
        (True once held; False at once when another holds them and ``wait`` is false);
        ``unfinished``: waits up to the seconds given for recorded ranges to finish, the ones
        still unfinished then; ``keys``: the dedupe store when it is not the catalog's;
        ``log_kept``: how long the log keeps a record now (ms, -1 forever, None unknown);
        ``files``: a store outside the catalog whose files are rewritten at the end (at most
        ``files_wait`` seconds); ``tables``: the catalog's files, rewritten after the finish
        as ``rewrite`` says (step 9 of the module doc)."""
        self._catalog = catalog
        self._store = store
        self._meters = meters
        self._heads = heads
        self._applied = applied
        self._hold = hold
        self._unfinished = unfinished
        self._max_wait = max_wait
        self._counters = counters
        self._keys = keys
        self._log_kept = log_kept
        self._files = files
        self._files_wait = files_wait
        self._tables = tables
        self._rewrite = rewrite or RewriteSettings()
        self._pause = pause
        self._sleep = sleep
        self._problem: str | None = None

    def erase(self, request: ErasureRequest) -> ErasureRecord:
        secret = self._catalog.secret()
        alias = pseudonym(secret, request.namespace, request.subject)
        for record in self.resume(wait=True):  # they hold the workers: finished first
            if (record.namespace, record.pseudonym) == (request.namespace, alias):
                return record  # this erasure, asked again after a run that did not finish it
        partitions = self._caught_up()
        kept = None if self._log_kept is None else self._log_kept()
        left: list[str] = []
        for _ in range(ATTEMPTS):
            with self._hold(True) as held:
                if held:
                    left = self._unfinished(SETTLE_HELD)
                    if not left:
                        record = self._erase_held(request, secret, alias, partitions, kept)
                        break
            self._unfinished(SETTLE_RELEASED)  # released: the workers finish what refused writes left
        else:
            raise StorageUnavailable(
                f"the sink workers left ranges unfinished ({', '.join(left) or 'held by a rebuild'});"
                " nothing was erased: retry when the workers run"
            )
        try:  # step 9, the hold released
            return self._rewrite_tables().get(record.id, record)
        except StorageUnavailable:  # the erasure is finished: its tables stay due for a later look
            log.warning("erasure %s: PostgreSQL tables not rewritten yet", record.id, exc_info=True)
            return record

    def resume(self, wait: bool = False) -> list[ErasureRecord]:
        """Finish every erasure a process began and did not finish (it died, or a step failed):
        from the step after the last one it recorded, under the maintenance hold (``wait``:
        for it, else return at once when another process holds it). No worker wrote since the
        erasure began (the catalog held them), so every step it repeats finds what it left."""
        finished = []
        for pending in self._catalog.unfinished():
            with self._hold(wait) as held:
                if not held:
                    break
                still = {u.record.id: u for u in self._catalog.unfinished()}.get(pending.record.id)
                if still is not None:  # not finished meanwhile by another node
                    finished.append(self._steps(still, partial(self._catalog.entries, still.record)))
        rewritten = self._rewrite_tables()  # step 9 of these, and of any erasure still due
        return [rewritten.get(record.id, record) for record in finished]

    def problem(self) -> str | None:
        """The catalog's tables left not rewritten by this node's last look (None: none)."""
        return self._problem

    def _rewrite_tables(self) -> dict[int, ErasureRecord]:
        """Step 9 of the module doc for every finished erasure whose tables are due; their
        records as updated, by id (none when another process is rewriting them)."""
        if self._tables is None:
            return {}
        due = self._catalog.unrewritten()
        if not due:
            self._problem = None
            return {}
        with self._tables.rewriting() as rewriter:
            if rewriter is None:
                return {}  # another node rewrites them: its outcome goes into the records
            files = {table: self._rewrite_table(rewriter, table) for table in self._tables.tables}
        left = {t: v for t, v in files.items() if v != "rewritten"}
        ids = ", ".join(str(r.id) for r in due)
        self._problem = _left_problem(ids, left) if left else None
        log.log(
            logging.WARNING if left else logging.INFO,
            "erasure %s: PostgreSQL tables after the erasure: %s",
            ids,
            ", ".join(f"{k} {v}" for k, v in files.items()),
            extra={"erasures": [r.id for r in due], "postgresFiles": files},
        )
        return {r.id: self._catalog.rewritten(r, files, not left) for r in due}

    def _rewrite_table(self, rewriter: TableRewriter, table: str) -> str:
        """One table rewritten, tried again with a doubling pause while busy or held."""
        settings = self._rewrite
        outcome = "busy"
        for attempt in range(settings.attempts):
            outcome = rewriter.rewrite(table, settings.lock_timeout)
            if outcome not in ("busy", "held"):
                break
            if attempt + 1 < settings.attempts:
                self._sleep(settings.backoff * 2**attempt)
        return outcome

    def erasures(self, namespace: str) -> list[ErasureRecord]:
        return self._catalog.erasures(namespace)

    def _caught_up(self) -> set[int]:
        """Step 1 of the module doc; the log's partitions."""
        wanted = self._heads()
        deadline = time.monotonic() + self._max_wait
        while any(self._applied().get(p, 0) < head for p, head in wanted.items()):
            if time.monotonic() >= deadline:
                raise StorageUnavailable(
                    "the sink workers did not apply the log up to this request in time; nothing was erased: retry"
                )
            time.sleep(self._pause)
        return set(wanted)

    def _erase_held(
        self, req: ErasureRequest, secret: bytes, alias: str, partitions: set[int], kept: int | None
    ) -> ErasureRecord:
        """Steps 3-4 of the module doc, the workers held off; then the rest (``_steps``)."""
        applied = self._applied()
        through = {p: applied.get(p, 0) for p in sorted(partitions | applied.keys())}
        meters = self._catalog.meter_keys(req.namespace)
        versions = self._store.versions(req.namespace, req.subject)
        if (
            not versions
            and not self._store.has_usage(meters, req.subject)
            and not self._catalog.refers(req.namespace, req.subject)
        ):
            raise subject_not_found()
        entries, keys = self._erased(secret, req.subject, alias, versions)
        forgotten = self._forget_held(req.namespace, req.subject, keys)
        record = self._catalog.begin(req, alias, through, entries, keys, kept)  # the workers held durably from here
        return self._steps(UnfinishedErasure(record, req.subject, Step.BEGUN), lambda: entries, keys, forgotten)

    def _forget_held(self, namespace: str, subject: str, stored: Sequence[ErasedKey]) -> int:
        """The keys of the subject's quarantined events dropped from a dedupe store outside the
        catalog (Redis; the catalog's own rows go in ``begin``'s transaction), before ``begin``
        deletes the events: they were never counted, so a resend is held again, and no entry
        keeps their ids. Before ``begin`` so a crash in between leaves the events to a retry,
        which finds them again; a dropped key of an event still held is claimed again by a
        resend and held once (the quarantine keeps one row per held key)."""
        if self._keys is None:
            return 0
        known = {(k.source, k.id) for k in stored}
        held = [key for key in self._catalog.held_keys(namespace, subject) if key not in known]
        return self._keys.forget_keys(namespace, held)

    def _steps(
        self,
        at: UnfinishedErasure,
        entries: Callable[[], Sequence[ErasedEntry]],
        keys: Sequence[ErasedKey] | None = None,
        forgotten: int = 0,
    ) -> ErasureRecord:
        """Steps 4 (the keys outside the catalog) to 8 of the module doc, each recorded when
        done; those ``at`` says are done are skipped. ``keys``: None when resumed (read again
        from the usage store, which still holds the originals until step 7); ``forgotten``: the
        quarantined events' keys ``_forget_held`` dropped there."""
        record, subject, step = at.record, at.subject, at.step
        ns, alias = record.namespace, record.pseudonym
        meters = self._catalog.meter_keys(ns)
        if step < Step.KEYS:
            counts = {}
            if self._keys is not None:
                if keys is None:
                    keys = self._erased_keys(ns, subject)
                counts["dedupeKeys"] = self._keys.erase_keys(ns, keys) + forgotten
            record = self._catalog.reached(record, Step.KEYS, counts)
        if step < Step.COPIED:
            copied = self._store.copy(record, entries(), meters, subject)
            record = self._catalog.reached(record, Step.COPIED, {"rollupRows": copied})
        if step < Step.SWITCHED:
            record = self._catalog.reached(record, Step.SWITCHED, self._catalog.switch(record, subject))
        if step < Step.DROPPED:
            self._store.drop(ns, entries(), meters, subject, alias)
            record = self._catalog.reached(record, Step.DROPPED, {})
        if step < Step.COUNTED and self._counters is not None:
            moved = self._counters(meters, subject, alias)
            record = self._catalog.reached(record, Step.COUNTED, {"liveCounters": moved})
        return self._catalog.finish(record, {}, self._rewritten(record))

    def _rewritten(self, record: ErasureRecord) -> dict[str, str] | None:
        """The files of the store outside the catalog rewritten without what the steps above
        deleted or replaced there (also when resumed: this runs before ``finish``)."""
        if self._files is None:
            return None
        files = self._files.rewrite_files(self._files_wait)
        clean = all(files.get(k) in ("rewritten", "saved", "off") for k in ("aof", "rdb"))
        log.log(
            logging.INFO if clean else logging.WARNING,
            "erasure %s: Redis persistence files after the erasure: %s",
            record.id,
            ", ".join(f"{k} {v}" for k, v in files.items()),
            extra={"erasure": record.id, "redisFiles": files},
        )
        return files

    def _erased_keys(self, namespace: str, subject: str) -> list[ErasedKey]:
        """The keys of the subject's stored versions (a resumed run before step 7)."""
        secret = self._catalog.secret()
        found = {(v.source, v.id) for v in self._store.versions(namespace, subject)}
        return [ErasedKey(src, id_, erased_id(secret, namespace, src, id_)) for src, id_ in sorted(found)]

    def _erased(
        self, secret: bytes, subject: str, alias: str, versions: Sequence[StoredVersion]
    ) -> tuple[list[ErasedEntry], list[ErasedKey]]:
        """Each version's erased form (checked against the live meters) and the keys erased."""
        live: dict[tuple[str, str], list[CompiledMeter]] = {}
        for meter in self._meters():  # the built-in meter reads the stored size, not the payload
            live.setdefault((meter.namespace, meter.spec.event_type), []).append(CompiledMeter(meter))
        entries, keys = [], {}
        for v in versions:
            new_id = erased_id(secret, v.namespace, v.source, v.id)
            keys[(v.source, v.id)] = ErasedKey(v.source, v.id, new_id)
            new_subject = alias if v.subject == subject else v.subject
            if is_void_record(v.raw):
                raw = erased_void_raw(v.raw, new_id)
            else:
                meters = live.get((v.namespace, v.type), [])
                raw = erased_raw(v.raw, v.namespace, v.type, new_subject, new_id, v.time_us, meters)
            entries.append(
                ErasedEntry(
                    v.stream, v.seq, v.namespace, v.type, new_subject, v.time_us, v.received_us, new_id, raw,
                    v.corrects, _kept(v),
                )
            )  # fmt: skip
        return entries, list(keys.values())


@dataclass(frozen=True, slots=True)
class RewriteSettings:
    """How the catalog's tables are rewritten after an erasure (``erasure.rewrite_*``)."""

    lock_timeout: float = 0.5
    """Seconds one rewrite waits for its table's lock (requests behind it wait as long)."""
    attempts: int = 4
    """Tries per table while its lock is busy (or old versions are still seen)."""
    backoff: float = 0.25
    """Seconds before the second try; doubled before each next one."""


def _left_problem(ids: str, left: dict[str, str]) -> str:
    tables = ", ".join(f"{t} ({v})" for t, v in left.items())
    return (
        f"PostgreSQL tables not rewritten after erasure {ids}: {tables}; their files may still hold"
        " what the erasure deleted (retried every few seconds; docs/erasure.md)"
    )


def _in_progress() -> ErasureInProgress:
    return ErasureInProgress(
        "an erasure of a subject is unfinished: usage over every subject would count its usage twice until"
        " it finishes (any API node finishes it within seconds): retry shortly"
    )


def _kept(v: StoredVersion) -> bytes:
    """The hash chain's content digest of the original version (what its link covers)."""
    return entry_digest(v.namespace, v.source, v.type, v.subject, v.time_us, v.received_us, v.raw, v.corrects)
