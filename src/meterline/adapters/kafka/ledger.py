"""The ledger on a Kafka topic (``ports.ledger.Ledger``, the ack path of scale mode).

``append`` validates each candidate against the namespace's meters as embedded ingest does
(unreadable values and over-cap group values are rejected), then, for the accepted ones, runs
the shared dedupe store's protocol (``ports.dedupe``, docs/scale.md):

1. **claim** every key: DUPLICATE and CONFLICT are answered as duplicates and not written;
2. **write** the CLAIMED events, each carrying the claim's token, with an idempotent producer
   (``enable.idempotence``, ``acks=all``: a record is acknowledged once every in-sync replica
   has it, and the producer's retries never duplicate it), and wait for every delivery report;
3. **confirm** the claims: only now are the events answered accepted;
4. **release** the claims when a write failed or no report came within ``delivery_timeout``.

Group values new to this node are claimed in the shared registry (``ports.group_values``) before
the events are admitted, so the cardinality cap holds across every node and restart: what the
registry refuses is rejected (``group_cardinality_exceeded``), and the sink workers, folding
under the same cap, never meet more values than it admitted.

Under the namespace's unknown-subject policy (``quarantine`` or ``reject``; one lookup per
request in the quarantine store, ``ports.quarantine``), an event whose subject no customer
claims is dead-lettered (``reject``) or, claimed like any other, *held* in the quarantine store
instead of written (``quarantine``), and answered ``quarantined`` once its claim is confirmed.
:meth:`KafkaLedger.write_released` writes the events a customer's save released.

A failed write, a key another request holds (BUSY) or a claim taken over fails the request
with ``StorageUnavailable`` (503 with Retry-After): re-sending it is safe — what was confirmed
answers as a duplicate, and the sink counts a key only under the token that confirmed it.

Reading the log is the sink workers' job (:mod:`.partitions`): a Kafka topic has no global
sequence, so ``read`` and ``position`` describe nothing here (empty, 0), and listing events is
answered from ClickHouse's raw table.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from meterline.adapters.kafka import envelope
from meterline.domain.customers.model import UnknownSubjects, subject_rule
from meterline.domain.errors import InvalidInput, StorageUnavailable
from meterline.domain.events.model import Candidate, Event, Outcome, Rejection, Status
from meterline.domain.meters.admission import Readings, admit_readings, read_event, unknown_values
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import LedgerEntry
from meterline.domain.meters.model import type_key
from meterline.ports.dead_letters import DeadLetterWriter, Rejected
from meterline.ports.dedupe import Claims, DedupeStore, EventKey, Verdict
from meterline.ports.group_values import GroupValueRegistry
from meterline.ports.ledger import Appended, EventFilter, StoredEvent
from meterline.ports.meters import MeterCatalog
from meterline.ports.quarantine import HeldEvents, Release, Screened
from meterline.runtime import freshness
from meterline.runtime.extras import import_extra


def producer_config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # retries never duplicate or reorder a record
        "acks": "all",
        "linger.ms": 2,  # concurrent requests share produce requests
        "message.timeout.ms": 30_000,
    }


def ensure_topic(bootstrap: str, topic: str, partitions: int, replication: int) -> None:
    """Create ``topic`` when it does not exist."""
    admin_mod = import_extra("confluent_kafka.admin", "scale")
    admin = admin_mod.AdminClient({"bootstrap.servers": bootstrap})
    try:
        if topic in admin.list_topics(timeout=10).topics:
            return
        futures = admin.create_topics([admin_mod.NewTopic(topic, partitions, replication)])
        futures[topic].result(30)
    except Exception as exc:
        if "TOPIC_ALREADY_EXISTS" in str(exc):
            return
        raise StorageUnavailable(f"cannot create Kafka topic {topic!r}: {type(exc).__name__}") from exc


def log_ends(bootstrap: str, topic: str, partitions: int, timeout: float = 10.0) -> dict[int, int]:
    """Per partition, the offset after its last record (the high watermark) now."""
    kafka = import_extra("confluent_kafka", "scale")
    consumer = kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"{topic}-ends", "enable.auto.commit": False}
    )
    try:
        return {
            p: int(consumer.get_watermark_offsets(kafka.TopicPartition(topic, p), timeout=timeout)[1])
            for p in range(partitions)
        }
    except Exception as exc:
        raise _unavailable(exc) from exc
    finally:
        consumer.close()


class _Request:
    """One append: its outcomes so far, and the claimed events waiting for delivery reports."""

    def __init__(
        self, outcomes: list[Outcome], claimed: list[tuple[int, Event]], token: str, busy: bool, keys: list[EventKey]
    ) -> None:
        self.future: Future[list[Outcome]] = Future()
        self.outcomes = outcomes
        self.claimed = claimed
        self.keys = keys
        """The keys to confirm once every write is durable (the written and the held ones)."""
        self.token = token
        self.busy = busy
        self.pending = len(claimed)
        self.error: str | None = None
        self.lock = threading.Lock()
        self.positions: dict[int, int] = {}
        """Per partition written to, the offset after this request's last record there."""
        self.freshness: freshness.Freshness | None = None

    def delivered(self, err: Any, partition: int, after: int) -> bool:
        """Note one delivery report; True when it was the last one."""
        with self.lock:
            if err is not None and self.error is None:
                self.error = str(err)
            elif err is None and after > self.positions.get(partition, 0):
                self.positions[partition] = after
            self.pending -= 1
            return self.pending == 0


class KafkaLedger:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        meters: MeterCatalog,
        dedupe: DedupeStore,
        now_us: Callable[[], int],
        *,
        cap: int,
        delivery_timeout: float = 30.0,
        dead_letters: DeadLetterWriter | None = None,
        held: HeldEvents | None = None,
        unknown_subjects: UnknownSubjects = UnknownSubjects.ACCEPT,
        group_values: GroupValueRegistry | None = None,
    ) -> None:
        """``dead_letters``: where rejected events are stored before a request is answered
        (without one, they are only reported). ``held``: the quarantine store, where the
        namespace's unknown-subject policy is read (``unknown_subjects`` where none is set) and
        events of unknown subjects are held; without one, every subject is accepted.
        ``group_values``: the registry that holds the cardinality cap across nodes (without
        one, the cap is this process's own)."""
        kafka = import_extra("confluent_kafka", "scale")
        config = producer_config(bootstrap)
        config["message.timeout.ms"] = int(delivery_timeout * 1000)
        self._producer = kafka.Producer(config)
        self._timeout = delivery_timeout
        self._topic = topic
        self._meters = meters
        self._dedupe = dedupe
        self._now_us = now_us
        self._cap = cap
        self._dead_letters = dead_letters
        self._held = held
        self._default_policy = unknown_subjects
        self._groups: dict[tuple[int, str], set[str]] = {}
        self._registry = group_values
        self._heads: dict[int, int] = {}
        self._heads_lock = threading.Lock()
        self._compiled: dict[int, CompiledMeter] = {}
        self._lock = threading.Lock()
        self._work = ThreadPoolExecutor(8, thread_name_prefix="meterline-kafka-ack")
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="meterline-kafka-producer", daemon=True)
        self._poller.start()

    def append(self, namespace: str, candidates: Sequence[Candidate]) -> Future[builtins.list[Outcome]]:
        """Validate, claim, write and confirm a request's events (see the module doc); the
        future resolves once every accepted event is durable and confirmed."""
        future: Future[list[Outcome]] = Future()
        self._work.submit(self._start, namespace, candidates, future, freshness.current())
        return future

    def read(self, after: int, limit: int) -> builtins.list[LedgerEntry]:
        return []

    def position(self) -> int:
        return 0

    def list(self, namespace: str, f: EventFilter, *, limit: int) -> builtins.list[StoredEvent]:
        return []

    def close(self) -> None:
        self._producer.flush(30)
        self._closed.set()
        self._poller.join(timeout=5)
        self._work.shutdown(wait=True)
        self._producer.close()  # else librdkafka keeps reconnecting to brokers until collected

    def _start(
        self,
        namespace: str,
        candidates: Sequence[Candidate],
        future: Future[builtins.list[Outcome]],
        fresh: freshness.Freshness | None = None,
    ) -> None:
        try:
            now = self._now_us()
            screened = self._screen(namespace, candidates)
            outcomes, accepted, unknown = self._admit(namespace, candidates, screened)
            self._dead_letter(namespace, now, candidates, outcomes)
            request = self._claim(namespace, now, outcomes, accepted, unknown)
            request.future = future
            request.freshness = fresh
            if not request.claimed:
                self._finish(request)
                return
            for _, ev in request.claimed:
                record = envelope.encode(ev, now, request.token)
                self._produce(envelope.key(ev.namespace, ev.subject), record, request)
        except BaseException as exc:
            if not future.done():
                future.set_exception(_unavailable(exc))

    def _dead_letter(
        self, namespace: str, now: int, candidates: Sequence[Candidate], outcomes: builtins.list[Outcome]
    ) -> None:
        """0. Store the rejected events (before anything is answered)."""
        if self._dead_letters is None:
            return
        letters = [
            Rejected(o.reason.value, o.message or "", c.source, c.id, c.raw)
            for c, o in zip(candidates, outcomes, strict=True)
            if o.status is Status.REJECTED and o.reason is not None
        ]
        self._dead_letters.add(namespace, now, letters)

    def heads(self) -> dict[int, int]:
        """Per partition, the offset after the last record this ledger had acknowledged: a
        reader that waits until the sink has applied that much reads this node's own writes."""
        with self._heads_lock:
            return dict(self._heads)

    def probe(self, timeout: float = 2.0) -> None:
        """One metadata round trip to the brokers; ``StorageUnavailable`` when none answers."""
        try:
            self._producer.list_topics(self._topic, timeout=timeout)
        except Exception as exc:
            raise StorageUnavailable(f"the Kafka brokers do not answer: {type(exc).__name__}") from exc

    def _claim(
        self,
        namespace: str,
        now: int,
        outcomes: builtins.list[Outcome],
        accepted: builtins.list[tuple[int, Event]],
        unknown: builtins.list[tuple[int, Event]],
    ) -> _Request:
        """1. Claim every accepted or quarantined key: duplicates and conflicts are answered,
        not written; the claimed events of unknown subjects are held (before the claims are
        confirmed: a retry after a crash finds them held, or claims them again)."""
        both = accepted + unknown
        keys = [EventKey(ev.namespace, ev.source, ev.id, ev.digest) for _, ev in both]
        claims = self._dedupe.claim(keys) if keys else Claims("", [])
        claimed: builtins.list[tuple[int, Event]] = []
        held: builtins.list[tuple[int, Event]] = []
        busy = False
        for n, ((i, ev), verdict) in enumerate(zip(both, claims.verdicts, strict=True)):
            if verdict is Verdict.CLAIMED:
                (claimed if n < len(accepted) else held).append((i, ev))
            elif verdict is Verdict.BUSY:
                busy = True
            else:
                index = outcomes[i].index
                outcomes[i] = Outcome(index, ev.id, ev.source, Status.DUPLICATE, conflict=verdict is Verdict.CONFLICT)
        mine = claims.claimed(keys)
        if held:
            self._hold(namespace, now, claims.token, [ev for _, ev in held], mine)
        return _Request(outcomes, claimed, claims.token, busy, mine)

    def _hold(
        self, namespace: str, now: int, token: str, events: builtins.list[Event], mine: builtins.list[EventKey]
    ) -> None:
        """1b. Keep the claimed events of unknown subjects in the quarantine store; the request
        fails (claims dropped, safe to retry) when that fails or a customer claimed one of
        their subjects meanwhile (the retry writes them to the log)."""
        assert self._held is not None
        try:
            kept = self._held.hold(namespace, token, events, now)
        except BaseException:
            self._dedupe.release(token, mine)
            raise
        if not kept:
            self._dedupe.release(token, mine)
            raise StorageUnavailable("a customer claimed the subject of a quarantined event meanwhile; send it again")

    def _screen(self, namespace: str, candidates: Sequence[Candidate]) -> Screened | None:
        """The namespace's policy and which subjects customers claim, when the policy is not
        ``accept`` (None: every subject is accepted)."""
        if self._held is None:
            return None
        subjects = [c.event.subject for c in candidates if c.event is not None]
        if not subjects:
            return None
        screened = self._held.screen(namespace, subjects)
        policy = screened.policy or self._default_policy
        return None if policy is UnknownSubjects.ACCEPT else Screened(policy, screened.owned)

    def write_released(self, releases: Sequence[Release]) -> Future[builtins.list[Outcome]]:
        """Write events a customer's save released from the quarantine, each under the token
        its claim was confirmed with and flagged released (the sink counts its first copy
        only); an event a meter can no longer read is dead-lettered instead. One outcome per
        release, in order (``index`` = its position); resolves once every write is durable."""
        future: Future[list[Outcome]] = Future()
        self._work.submit(self._release, releases, future)
        return future

    def _release(self, releases: Sequence[Release], future: Future[builtins.list[Outcome]]) -> None:
        try:
            now = self._now_us()
            outcomes: builtins.list[Outcome] = []
            written: builtins.list[tuple[int, Event]] = []
            live = {ns: self._live(ns) for ns in {r.event.namespace for r in releases}}
            read = [read_event(live[r.event.namespace].get(r.event.type, ()), r.event) for r in releases]
            for n, (r, verdict) in enumerate(zip(releases, self._admit_read(read), strict=True)):
                ev = r.event
                if isinstance(verdict, list):
                    written.append((n, ev))
                    outcomes.append(Outcome(n, ev.id, ev.source, Status.ACCEPTED))
                else:
                    outcomes.append(Outcome(n, ev.id, ev.source, Status.REJECTED, verdict.reason, verdict.message))
            for n, r in enumerate(releases):
                o = outcomes[n]
                if o.status is Status.REJECTED and self._dead_letters is not None and o.reason is not None:
                    letter = Rejected(o.reason.value, o.message or "", r.event.source, r.event.id, r.event.raw)
                    self._dead_letters.add(r.event.namespace, now, [letter])
            request = _Request(outcomes, written, "", False, [])
            request.future = future
            if not written:
                self._finish(request)
                return
            for n, ev in written:
                record = envelope.encode(ev, now, releases[n].token, released=True)
                self._produce(envelope.key(ev.namespace, ev.subject), record, request)
        except BaseException as exc:
            if not future.done():
                future.set_exception(_unavailable(exc))

    def write_correction(
        self, stream: str, event: Event, received_us: int, corrects: int, *, amend: bool, record: bytes = b""
    ) -> int:
        """A correction entry superseding ``corrects``, written to ``stream`` itself (the
        original's partition: it follows the original there whatever the partitioner says), with
        its chained audit ``record``; its seq once acknowledged (``ports.correction_log.CorrectionWriter``)."""
        topic, _, partition = stream.rpartition(":")
        if topic != self._topic:
            raise StorageUnavailable(f"the event is in a partition of another topic ({topic!r})")
        if amend:
            read = read_event(self._live(event.namespace).get(event.type, ()), event)
            admitted = self._admit_read([read])[0]  # under the shared cap, as ingest admits
            if not isinstance(admitted, list):
                raise InvalidInput(
                    f"A live meter cannot read the amended event: {admitted.message}",
                    code="amend_unreadable",
                    reason=admitted.reason.value,
                )
        request = _Request([Outcome(0, event.id, event.source, Status.ACCEPTED)], [(0, event)], "", False, [])
        value = envelope.encode(event, received_us, corrects=corrects, record=record)
        self._produce(envelope.key(event.namespace, event.subject), value, request, int(partition))
        try:
            request.future.result(self._timeout + 5)
        except TimeoutError as exc:
            raise StorageUnavailable("Kafka did not acknowledge the correction in time") from exc
        return request.positions[int(partition)]

    def _produce(self, key: bytes, value: bytes, request: _Request, partition: int | None = None) -> None:
        """2. Write one claimed event; its delivery report arrives on the poll thread."""
        where = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(
                    self._topic, value, key, on_delivery=lambda err, msg: self._delivered(request, err, msg), **where
                )
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.05)

    def _delivered(self, request: _Request, err: Any, msg: Any) -> None:
        partition, after = (msg.partition(), msg.offset() + 1) if err is None else (-1, 0)
        if err is None:
            with self._heads_lock:
                if after > self._heads.get(partition, 0):
                    self._heads[partition] = after
        if request.delivered(err, partition, after):
            self._work.submit(self._finish, request)

    def _finish(self, request: _Request) -> None:
        """3. Confirm the claims once every write is durable, or 4. release them after a failed write."""
        future = request.future
        try:
            if request.error is not None:
                self._dedupe.release(request.token, request.keys)
                future.set_exception(StorageUnavailable(f"Kafka did not acknowledge an event: {request.error}"))
                return
            held = self._dedupe.confirm(request.token, request.keys) if request.keys else []
            if request.busy or not all(held):
                # another request holds (or took over) some keys: a retry is safe, and the keys
                # confirmed here answer as duplicates then
                future.set_exception(StorageUnavailable("events of this request are being written by another request"))
                return
            if request.freshness is not None and request.positions:
                request.freshness.log_positions = dict(request.positions)  # Meterline-Log-Positions
            future.set_result(Appended(request.outcomes, 0))
        except BaseException as exc:
            if not future.done():
                future.set_exception(_unavailable(exc))

    def _admit(
        self, namespace: str, candidates: Sequence[Candidate], screened: Screened | None
    ) -> tuple[builtins.list[Outcome], builtins.list[tuple[int, Event]], builtins.list[tuple[int, Event]]]:
        """Per candidate its outcome; the accepted events and those of unknown subjects to
        quarantine, by outcome position. As in embedded ingest, the subject rule comes first: a
        quarantined event meets the meters when it is released."""
        by_type = self._live(namespace)
        outcomes: builtins.list[Outcome] = []
        accepted: builtins.list[tuple[int, Event]] = []
        unknown: builtins.list[tuple[int, Event]] = []
        read: builtins.list[tuple[int, int, Event, Readings | Rejection]] = []
        for c in candidates:
            ev = c.event
            if ev is None:
                assert c.rejection is not None
                outcomes.append(
                    Outcome(c.index, c.id, c.source, Status.REJECTED, c.rejection.reason, c.rejection.message)
                )
                continue
            if screened is not None and screened.policy is not None:
                rule = subject_rule(screened.policy, screened.owned, ev.subject)
                if isinstance(rule, Rejection):
                    outcomes.append(Outcome(c.index, ev.id, ev.source, Status.REJECTED, rule.reason, rule.message))
                    continue
                if rule is UnknownSubjects.QUARANTINE:
                    unknown.append((len(outcomes), ev))
                    outcomes.append(Outcome(c.index, ev.id, ev.source, Status.QUARANTINED))
                    continue
            read.append((len(outcomes), c.index, ev, read_event(by_type.get(ev.type, ()), ev)))
            outcomes.append(Outcome(c.index, ev.id, ev.source, Status.ACCEPTED))
        verdicts = self._admit_read([readings for _, _, _, readings in read])
        for (at, index, ev, _), verdict in zip(read, verdicts, strict=True):
            if isinstance(verdict, list):
                accepted.append((at, ev))
            else:
                outcomes[at] = Outcome(index, ev.id, ev.source, Status.REJECTED, verdict.reason, verdict.message)
        return outcomes, accepted, unknown

    def _admit_read(self, read: Sequence[Readings | Rejection]) -> builtins.list[builtins.list[Any] | Rejection]:
        """Admit events by what their meters read, in order: the group values they newly
        admit, or why not. Values new to this node are claimed in the shared registry first
        (one round trip, only when there are any); the admission itself holds the lock, since
        the values admitted so far are shared by concurrent requests."""
        refused: frozenset[tuple[int, str, str]] = frozenset()
        if self._registry is not None:
            with self._lock:
                new = [v for r in read if not isinstance(r, Rejection) for v in unknown_values(self._groups, r)]
            if new:
                admitted = self._registry.claim(new, self._cap)
                refused = frozenset(new) - admitted
        with self._lock:
            return [
                r if isinstance(r, Rejection) else admit_readings(self._groups, self._cap, r, refused) for r in read
            ]

    def _poll(self) -> None:
        """Serve delivery reports."""
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def _live(self, namespace: str) -> dict[str, builtins.list[CompiledMeter]]:
        by_type: dict[str, builtins.list[CompiledMeter]] = {}
        for meter in self._meters.list(namespace):
            compiled = self._compiled.get(meter.key)
            if compiled is None:
                compiled = self._compiled[meter.key] = CompiledMeter(meter)
            # a built-in meter (under EVERY_TYPE) is never looked up: it reads every event
            by_type.setdefault(type_key(meter.spec), []).append(compiled)
        return by_type


def _unavailable(exc: BaseException) -> StorageUnavailable:
    if isinstance(exc, StorageUnavailable):
        return exc
    return StorageUnavailable(f"the Kafka ledger failed: {type(exc).__name__}")
