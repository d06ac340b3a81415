"""The ledger in memory (``ports.ledger.Ledger``): idempotent appends into a list.

The same guarantees as the SQLite ledger:

1. per event, in request order: a key ``(namespace, source, id)`` seen before (earlier in
   this request or in an earlier one received within the dedupe window, ``window_us``; None
   keeps keys forever) is a *duplicate*, flagged as a conflict when the payload digest differs;
   the first payload wins and nothing of the retry is stored;
2. joined to a customer store, the namespace's unknown-subject policy
   (``domain.customers.model.subject_rule``) rejects or quarantines an event no customer
   claims; a quarantined event's key is taken, and saving a customer that claims its subject
   releases it into the ledger (through the meters, as live ingest would: an event a meter can
   no longer read becomes a dead letter and frees its key);
3. otherwise every live meter of its type must read it (``domain.meters.admission``), or the
   event is rejected as a whole and kept as a dead letter with the reason;
4. accepted events get the next sequence numbers; the whole request is applied under one lock
   (the customers' lock when joined), so the position an append answers covers every event of
   it and a customer save never interleaves with it.

"Durable" means "in this process": a new instance starts empty.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from meterline.adapters.memory.customers import MemoryCustomers
from meterline.domain.customers.model import UnknownSubjects, subject_rule
from meterline.domain.errors import InvalidInput
from meterline.domain.events.model import Candidate, Event, Outcome, Rejection, Status
from meterline.domain.meters.admission import admit_event
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.model import type_key
from meterline.ports.ledger import Appended, EventFilter, LedgerEntry, StoredEvent
from meterline.ports.meters import MeterCatalog

__all__ = ["DeadLetter", "MemoryLedger"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected event, as received, with why."""

    namespace: str
    received_us: int
    rejection: Rejection
    source: str | None
    event_id: str | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class _Stored:
    entry: LedgerEntry
    id: str


class MemoryLedger:
    def __init__(
        self,
        now_us: Callable[[], int],
        meters: MeterCatalog | None = None,
        *,
        cap: int = 1000,
        customers: MemoryCustomers | None = None,
        default_policy: UnknownSubjects = UnknownSubjects.ACCEPT,
        window_us: int | None = None,
    ) -> None:
        """``meters`` validates events as ingest does (none: every valid event is accepted);
        ``cap`` is the most distinct values a groupBy dimension admits; ``customers`` (joined
        here: its saves release into this ledger) says which subjects are known and each
        namespace's unknown-subject policy, ``default_policy`` where none was set;
        ``window_us`` is the dedupe window (None: forever)."""
        self._now_us = now_us
        self._meters = meters
        self._cap = cap
        self._customers = customers
        self._default_policy = default_policy
        self._window_us = window_us
        self._lock: threading.RLock | threading.Lock = threading.Lock()
        if customers is not None:
            self._lock = customers.lock
            customers.release = self._release
        self._entries: list[_Stored] = []
        self._digests: dict[tuple[str, str, str], tuple[bytes, int]] = {}  # key -> (first digest, received)
        self._groups: dict[tuple[int, str], set[str]] = {}
        self._compiled: dict[int, CompiledMeter] = {}
        self.dead_letters: list[DeadLetter] = []

    def append(self, namespace: str, candidates: Sequence[Candidate]) -> Future[list[Outcome]]:
        """Record a request's events; the returned future is already resolved (with an
        :class:`~meterline.ports.ledger.Appended`)."""
        meters = self._live(namespace)
        with self._lock:
            now = self._now_us()
            outcomes = [self._one(namespace, c, meters, now) for c in candidates]
            appended = Appended(outcomes, len(self._entries))
        future: Future[list[Outcome]] = Future()
        future.set_result(appended)
        return future

    def read(self, after: int, limit: int) -> builtins.list[LedgerEntry]:
        with self._lock:
            return [s.entry for s in self._entries[max(after, 0) : max(after, 0) + max(limit, 0)]]

    def position(self) -> int:
        with self._lock:
            return len(self._entries)

    def list(self, namespace: str, f: EventFilter, *, limit: int) -> builtins.list[StoredEvent]:
        """Newest first. ``subject`` and ``event_id`` match substrings; time bounds are inclusive."""
        if f.after is not None:  # a cursor of scale mode's list; this ledger pages by seq
            raise InvalidInput("cursor must be a nextCursor this list answered", code="invalid_cursor")
        with self._lock:
            entries = list(reversed(self._entries))
        found: builtins.list[StoredEvent] = []
        for s in entries:
            if len(found) >= limit:
                break
            e = s.entry
            if e.namespace == namespace and _matches(f, e, s.id):
                found.append(StoredEvent(e.seq, e.namespace, e.raw, e.received_us))
        return found

    def _live(self, namespace: str) -> dict[str, builtins.list[CompiledMeter]]:
        """The namespace's live meters by event type, compiled once per meter."""
        by_type: dict[str, builtins.list[CompiledMeter]] = {}
        for meter in [] if self._meters is None else self._meters.list(namespace):
            compiled = self._compiled.get(meter.key)
            if compiled is None:
                compiled = self._compiled[meter.key] = CompiledMeter(meter)
            by_type.setdefault(type_key(meter.spec), []).append(compiled)  # a built-in reads every event
        return by_type

    def _one(self, namespace: str, c: Candidate, meters: dict[str, builtins.list[CompiledMeter]], now: int) -> Outcome:
        ev = c.event
        if ev is None:
            assert c.rejection is not None
            return self._reject(namespace, c, c.rejection, now)
        first = self._digests.get((ev.namespace, ev.source, ev.id))
        if first is not None and (self._window_us is None or first[1] >= now - self._window_us):
            return Outcome(c.index, ev.id, ev.source, Status.DUPLICATE, conflict=first[0] != ev.digest)
        rule = self._subject_rule(namespace, ev.subject)
        if isinstance(rule, Rejection):
            return self._reject(namespace, c, rule, now)
        if rule is UnknownSubjects.QUARANTINE:
            assert self._customers is not None
            self._digests[(ev.namespace, ev.source, ev.id)] = (ev.digest, now)
            self._customers.quarantine.hold(ev, now)
            return Outcome(c.index, ev.id, ev.source, Status.QUARANTINED)
        admitted = admit_event(meters.get(ev.type, ()), self._groups, self._cap, ev)
        if isinstance(admitted, Rejection):
            return self._reject(namespace, c, admitted, now)
        self._digests[(ev.namespace, ev.source, ev.id)] = (ev.digest, now)
        self._entries.append(_Stored(_entry(len(self._entries) + 1, ev, now), ev.id))
        return Outcome(c.index, ev.id, ev.source, Status.ACCEPTED)

    def _subject_rule(self, namespace: str, subject: str) -> UnknownSubjects | Rejection:
        if self._customers is None:
            return UnknownSubjects.ACCEPT
        policy = self._customers.policy(namespace) or self._default_policy
        owned = () if policy is UnknownSubjects.ACCEPT or not self._customers.owns(namespace, subject) else (subject,)
        return subject_rule(policy, owned, subject)

    def _release(self, namespace: str, subjects: Sequence[str]) -> tuple[int, int]:
        """Move the subjects' quarantined events into the ledger in arrival order (called by
        the joined customer store, under the shared lock, as part of its save)."""
        assert self._customers is not None
        meters, now = self._live(namespace), self._now_us()
        accepted = rejected = 0
        for ev in self._customers.quarantine.take(namespace, subjects):
            admitted = admit_event(meters.get(ev.type, ()), self._groups, self._cap, ev)
            if isinstance(admitted, Rejection):
                del self._digests[(ev.namespace, ev.source, ev.id)]  # its key is free again
                self._reject(namespace, Candidate(0, ev.id, ev.source, raw=ev.raw), admitted, now)
                rejected += 1
                continue
            self._entries.append(_Stored(_entry(len(self._entries) + 1, ev, now), ev.id))
            accepted += 1
        return accepted, rejected

    def _reject(self, namespace: str, c: Candidate, rejection: Rejection, now: int) -> Outcome:
        self.dead_letters.append(DeadLetter(namespace, now, rejection, c.source, c.id, c.raw))
        return Outcome(c.index, c.id, c.source, Status.REJECTED, rejection.reason, rejection.message)


def _entry(seq: int, ev: Event, received_us: int) -> LedgerEntry:
    return LedgerEntry(seq, ev.namespace, ev.source, ev.type, ev.subject, ev.time_us, ev.raw, received_us)


def _matches(f: EventFilter, e: LedgerEntry, event_id: str) -> bool:
    if (f.subject and f.subject not in e.subject) or (f.event_id and f.event_id not in event_id):
        return False
    if (f.source and f.source != e.source) or (f.type and f.type != e.type):
        return False
    if f.before_seq is not None and e.seq >= f.before_seq:
        return False
    if f.from_seq is not None and e.seq < f.from_seq:
        return False
    for low, value, high in ((f.start_us, e.time_us, f.end_us), (f.received_from_us, e.received_us, f.received_to_us)):
        if (low is not None and value < low) or (high is not None and value > high):
            return False
    return True
