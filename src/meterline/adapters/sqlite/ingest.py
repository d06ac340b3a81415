"""The ack path: dedupe, meter validation and the ledger append, in the writer's transaction.

Runs only on the writer thread, inside the writer's transaction. Per batch:

1. look up every idempotency key of the batch in one query (plus keys seen earlier in this
   same transaction);
2. per event, in request order: a known key is a *duplicate* (flagged as a conflict when the
   payload digest differs; the first payload wins); otherwise every live meter for the event's
   type reads it — an unreadable value or a group-by over its cardinality cap rejects the
   event as a whole, so an event is never counted by some meters and not others;
3. accepted events get the next ledger sequence numbers and their chain hash
   (``domain.integrity.chain``: every ledger row is made by ``Appender._accept``, which links
   it to the one before) and are appended with their dedupe keys (and their newly admitted
   group values); rejected ones go to the dead-letter table with the raw event and the reason.

Nothing else: rollups, live counters and alerts are the aggregator's work
(``services.aggregation``), which reads the ledger after its offset. ``IngestState`` caches
meters and group values; any rollback marks it stale and it reloads from the database inside
the next transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from meterline.adapters.sqlite.chain import last_entry, read_format, record_head
from meterline.adapters.sqlite.dedupe_index import DedupeIndex
from meterline.adapters.sqlite.recent import RecentEntries
from meterline.domain.customers.model import UnknownSubjects, subject_rule
from meterline.domain.errors import InvalidInput
from meterline.domain.events.corrections import Action, CorrectionRequest
from meterline.domain.events.model import Candidate, Event, Outcome, Rejection, Status
from meterline.domain.integrity.chain import ChainFormat, content_digest, content_digest_v2, correction_record, link
from meterline.domain.meters.admission import admit_event
from meterline.domain.meters.evaluate import CompiledMeter, Reading
from meterline.domain.meters.fold import LedgerEntry, Preread, by_event_type, of_type
from meterline.domain.meters.model import Meter, MeterSpec
from meterline.ports.ledger import Appended
from meterline.ports.stream import UsageListener

_spec = msgspec.json.Decoder(MeterSpec)
DEDUPE_FLOOR_KEY = "dedupe_floor_us"  # in ``meta``: see adapters.sqlite.dedupe_prune
INSERT_EVENT = (
    "INSERT INTO events (seq, namespace, source, id, type, subject, time_us, received_us, digest, raw, chain,"
    " correction) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)


@dataclass(frozen=True, slots=True)
class IngestSettings:
    dedupe_window_us: int | None
    max_group_cardinality: int
    unknown_subjects: UnknownSubjects = UnknownSubjects.ACCEPT


class IngestState:
    """Writer-thread caches: live meters by (namespace, type), group values, next seq; and the
    committed ledger position (``head``, published after each COMMIT)."""

    def __init__(self, settings: IngestSettings, dedupe: DedupeIndex) -> None:
        self.settings = settings
        self.dedupe = dedupe  # idempotency keys -> ledger/quarantine rows (adapters.sqlite.dedupe_index)
        self.stale = True
        self.meters: dict[tuple[str, str], list[CompiledMeter]] = {}
        self.group_values: dict[tuple[int, str], set[str]] = {}
        self.next_seq = 1
        self.chain = b""
        """The chain hash of entry ``next_seq - 1`` (in the open transaction)."""
        self.format = ChainFormat(None)
        """The store's content formats (``adapters.sqlite.chain.ensure_format`` ran at open)."""
        self.head = 0
        """The position of the last committed ledger entry (read by any thread)."""
        self.committing_head = 0
        self.customer_subjects: dict[str, set[str]] = {}
        self.policies: dict[str, UnknownSubjects] = {}
        self.meter_keys: dict[tuple[str, str], tuple[list[CompiledMeter], frozenset[tuple[int, int]]]] = {}
        """Per (namespace, type): its meters, each one's key and definition time (``Preread.meters``)."""
        self.appended = False
        """Entries were appended in the open transaction (its chain head is recorded before COMMIT)."""
        self.pending: list[LedgerEntry] = []
        """Entries appended in the open transaction, with their readings (for ``recent``)."""
        self.recent: RecentEntries = RecentEntries()
        self.listeners: list[UsageListener] = []
        self.on_head: list[Callable[[int], None]] = []
        self.dedupe_floor_us = 0  # keys received before it are expired (see adapters.sqlite.dedupe_prune)

    def invalidate(self) -> None:
        """Reload the caches from the database before their next use."""
        self.stale = True

    def rolled_back(self, whole_transaction: bool) -> None:
        """The writer rolled back one task (its readings never reached a listener) or the
        whole transaction (then the listeners hold effects of work that no longer exists)."""
        self.invalidate()
        self.pending.clear()  # a rolled-back task's entries must never be served
        if whole_transaction:
            for listener in self.listeners:
                listener.rolled_back()

    def before_commit(self, conn: sqlite3.Connection) -> None:
        """Record the chain head of a transaction that appended (``adapters.sqlite.chain``)."""
        if self.appended:
            record_head(conn)
            self.appended = False

    def committed(self) -> None:
        """After COMMIT: the committed entries join ``recent``, listeners publish, then the
        new ledger position is published."""
        if self.pending:
            self.recent.add(self.pending)
            self.pending = []
        for listener in self.listeners:
            listener.after_commit()
        if self.committing_head != self.head:
            self.head = self.committing_head
            for wake in self.on_head:
                wake(self.head)

    def of_kind(self, kind: tuple[str, str]) -> tuple[list[CompiledMeter], frozenset[tuple[int, int]]]:
        """The live meters that count events of (namespace, type) (built-ins included) and
        their keys and definition times (``Preread.meters``), kept per kind until a reload."""
        found = self.meter_keys.get(kind)
        if found is None:
            meters = of_type(self.meters, *kind)
            found = self.meter_keys[kind] = (meters, frozenset((m.meter.key, m.meter.updated_us) for m in meters))
        return found

    def policy(self, namespace: str) -> UnknownSubjects:
        return self.policies.get(namespace, self.settings.unknown_subjects)

    def load(self, conn: sqlite3.Connection) -> None:
        if not self.stale:
            return
        self.meters = by_event_type(CompiledMeter(meter) for meter in live_meters(conn))
        self.meter_keys = {}
        self.group_values = {}
        for key, dim, value in conn.execute("SELECT meter, dim, value FROM group_values"):
            self.group_values.setdefault((key, dim), set()).add(value)
        last_seq, self.chain = last_entry(conn)
        self.format = read_format(conn)
        self.next_seq = last_seq + 1
        self.customer_subjects = {}
        # a customer's usage is its subject keys and its own key (``Customer.usage_subjects``)
        owned = "SELECT namespace, subject FROM customer_subjects UNION SELECT namespace, key FROM customers"
        for namespace, subject in conn.execute(owned + " WHERE deleted_us IS NULL"):
            self.customer_subjects.setdefault(namespace, set()).add(subject)
        self.policies = {ns: UnknownSubjects(p) for ns, p in conn.execute("SELECT * FROM namespace_settings")}
        floor = conn.execute("SELECT value FROM meta WHERE key = ?", (DEDUPE_FLOOR_KEY,)).fetchone()
        self.dedupe_floor_us = 0 if floor is None else int(floor[0])
        self.stale = False


NOTHING_READ = Preread(frozenset(), {})
"""No live meter of the event's namespace and type."""


def live_meters(conn: sqlite3.Connection) -> list[Meter]:
    rows = conn.execute(
        "SELECT key, id, namespace, spec, created_us, updated_us FROM meters WHERE deleted_us IS NULL ORDER BY key"
    )
    return [Meter(key, id_, ns, _spec.decode(spec), created, updated) for key, id_, ns, spec, created, updated in rows]


class Appender:
    """Applies one request's candidates. One instance per request, used once."""

    def __init__(self, state: IngestState, conn: sqlite3.Connection, now_us: int) -> None:
        state.load(conn)
        self.state = state
        self.conn = conn
        self.now_us = now_us
        self.events: list[tuple[object, ...]] = []
        self.keys: list[tuple[str, str, str, int, bytes, int]] = []  # for the dedupe index
        self.dead: list[tuple[object, ...]] = []
        self.new_groups: list[tuple[int, str, str]] = []
        self.entries: list[LedgerEntry] = []
        self.read: Preread = NOTHING_READ
        self.quarantined = 0
        self.namespace = ""
        self.policy = UnknownSubjects.ACCEPT
        self.owned: set[str] = set()

    def append(self, namespace: str, candidates: Sequence[Candidate]) -> Appended:
        return self.append_all([(namespace, candidates)])[0]

    def append_all(self, requests: Sequence[tuple[str, Sequence[Candidate]]]) -> list[Appended]:
        """Requests (namespace, candidates) in order, each as if appended alone after the ones
        before it (a key an earlier one accepted is a duplicate in a later one): one dedupe
        lookup per namespace and one write for all of them."""
        known = self._known_all(requests)
        out: list[Appended] = []
        for namespace, candidates in requests:
            self.namespace = namespace
            self.policy = self.state.policy(namespace)
            self.owned = self.state.customer_subjects.get(namespace, set())
            seen = known[namespace]
            outcomes = [self._one(c, seen) for c in candidates]
            out.append(Appended(outcomes, self.state.next_seq - 1))
        self._write()
        return out

    def _one(self, c: Candidate, known: dict[tuple[str, str], bytes]) -> Outcome:
        if c.event is None:
            assert c.rejection is not None
            return self._reject(c, c.rejection)
        ev = c.event
        first = known.get((ev.source, ev.id))
        if first is not None:
            return Outcome(c.index, ev.id, ev.source, Status.DUPLICATE, conflict=first != ev.digest)
        rule = subject_rule(self.policy, self.owned, ev.subject)
        if isinstance(rule, Rejection):
            return self._reject(c, rule)
        if rule is UnknownSubjects.QUARANTINE:
            known[(ev.source, ev.id)] = ev.digest
            self._quarantine(ev)
            return Outcome(c.index, ev.id, ev.source, Status.QUARANTINED)
        problem = self._check(ev)
        if problem is not None:
            return self._reject(c, problem)
        known[(ev.source, ev.id)] = ev.digest
        self._accept(ev)
        return Outcome(c.index, ev.id, ev.source, Status.ACCEPTED)

    def _quarantine(self, ev: Event) -> None:
        """Keep a valid event of an unknown subject; its dedupe key points at the quarantine row
        (seq = -id) so a retry is a duplicate, and release moves it into the ledger once."""
        cur = self.conn.execute(
            "INSERT INTO quarantine (namespace, source, event_id, type, subject, time_us, received_us, digest, raw)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (ev.namespace, ev.source, ev.id, ev.type, ev.subject, ev.time_us, self.now_us, ev.digest, ev.raw),
        )
        assert cur.lastrowid is not None
        self.state.dedupe.add_many([(ev.namespace, ev.source, ev.id, -cur.lastrowid, ev.digest, self.now_us)])
        self.quarantined += 1

    def release(self, events: Sequence[Event]) -> tuple[int, int]:
        """Move quarantined events (already deduplicated when they arrived) into the ledger,
        through the meters as live ingest would. Returns (accepted, rejected): an event a
        meter can no longer read goes to the dead-letter store, never nowhere."""
        accepted = rejected = 0
        for ev in events:
            self.namespace = ev.namespace
            problem = self._check(ev)
            if problem is not None:
                # Its key is free: the quarantine row is deleted and no ledger row holds the key.
                self._reject(Candidate(0, ev.id, ev.source, raw=ev.raw), problem)
                rejected += 1
                continue
            self._accept(ev)
            accepted += 1
        self._write()
        return accepted, rejected

    def correct(self, req: CorrectionRequest, original: int, current: Event) -> int:
        """Append a correction of the key whose chain starts at ``original`` and whose counting
        version is ``current`` (``adapters.sqlite.corrections`` found both); returns its seq.
        An amend passes the live meters' checks as an ingested event would."""
        self.namespace = req.namespace
        # the audit record the chain covers (content format 2), stored beside the entry
        chained = correction_record(req.action.value, original, req.reason, req.actor)
        if req.action is Action.AMEND:
            assert req.event is not None
            problem = self._check(req.event)
            if problem is not None:
                raise InvalidInput(
                    f"A live meter cannot read the amended event: {problem.message}",
                    code="amend_unreadable",
                    reason=problem.reason.value,
                )
            self._accept(req.event, chained)
        else:
            record = {"void": {"original": original, "reason": req.reason, "actor": req.actor}}
            self._accept(msgspec.structs.replace(current, data=None, raw=msgspec.json.encode(record)), chained)
        seq = self.state.next_seq - 1
        self.entries[-1] = self.entries[-1]._replace(read=None, correction=original)
        self.conn.execute(
            "INSERT INTO corrections VALUES (?,?,?,?,?,?)",
            (seq, original, req.namespace, req.action.value, req.reason, req.actor),
        )
        self._write()
        return seq

    def _check(self, ev: Event) -> Rejection | None:
        """Whether every live meter can read the event (``domain.meters.admission``); the
        readings themselves are the aggregator's."""
        meters, keys = self.state.of_kind((ev.namespace, ev.type))
        taken: dict[int, Reading] = {}
        cap = self.state.settings.max_group_cardinality
        admitted = admit_event(meters, self.state.group_values, cap, ev, taken)
        if isinstance(admitted, Rejection):
            return admitted
        self.new_groups.extend(admitted)
        self.read = Preread(keys, taken) if meters else NOTHING_READ
        return None

    def _accept(self, ev: Event, correction: bytes | None = None) -> None:
        """Give the event the next seq and link it into the chain (every ledger row is made here);
        ``correction``: a correction entry's chained audit record."""
        state, now = self.state, self.now_us
        seq = state.next_seq
        state.next_seq += 1
        since = state.format.since  # ``ChainFormat.content``, inlined on the ack path
        if since is not None and seq >= since:
            content = content_digest_v2(
                since, ev.namespace, ev.source, ev.id, ev.type, ev.subject, ev.time_us, now, ev.digest, ev.raw,
                correction or b"",
            )  # fmt: skip
        else:  # a store not switched to format 2 (ensure_format did not run)
            correction = None
            content = content_digest(
                ev.namespace, ev.source, ev.id, ev.type, ev.subject, ev.time_us, now, ev.digest, ev.raw
            )
        chain = state.chain = link(state.chain, seq, content)
        self.events.append(
            (seq, ev.namespace, ev.source, ev.id, ev.type, ev.subject, ev.time_us, now, ev.digest, ev.raw, chain,
             correction)
        )  # fmt: skip
        self.keys.append((ev.namespace, ev.source, ev.id, seq, ev.digest, self.now_us))
        self.entries.append(
            LedgerEntry(seq, ev.namespace, ev.source, ev.type, ev.subject, ev.time_us, ev.raw, self.now_us, self.read)
        )

    def _reject(self, c: Candidate, rejection: Rejection) -> Outcome:
        self.dead.append(
            (self.namespace, self.now_us, rejection.reason.value, rejection.message, c.source, c.id, c.raw)
        )
        return Outcome(c.index, c.id, c.source, Status.REJECTED, rejection.reason, rejection.message)

    def _known_all(
        self, requests: Sequence[tuple[str, Sequence[Candidate]]]
    ) -> dict[str, dict[tuple[str, str], bytes]]:
        """Per namespace of ``requests``: the keys of their events already stored (``_known``)."""
        events: dict[str, list[Event]] = {}
        for namespace, candidates in requests:
            events.setdefault(namespace, []).extend(c.event for c in candidates if c.event is not None)
        return {namespace: self._known(namespace, evs) for namespace, evs in events.items()}

    def _known(self, namespace: str, events: list[Event]) -> dict[tuple[str, str], bytes]:
        if not events:
            return {}
        window = self.state.settings.dedupe_window_us
        # Expired: first received before the window, or before the pruning floor (pruned or not).
        oldest = -1 if window is None else max(self.now_us - window, self.state.dedupe_floor_us)
        return self.state.dedupe.lookup(self.conn, events, oldest)

    def _write(self) -> None:
        conn = self.conn
        if self.events:
            conn.executemany(INSERT_EVENT, self.events)
            self.state.appended = True
            self.state.dedupe.add_many(self.keys)
            self.state.pending.extend(self.entries)
        if self.dead:
            conn.executemany(
                "INSERT INTO dead_letters (namespace, received_us, reason, message, source, event_id, raw)"
                " VALUES (?,?,?,?,?,?,?)",
                self.dead,
            )
        if self.new_groups:
            conn.executemany("INSERT OR IGNORE INTO group_values VALUES (?,?,?)", self.new_groups)
