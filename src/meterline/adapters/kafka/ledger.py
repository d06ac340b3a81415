"""The ledger on a Kafka topic (``ports.ledger.Ledger``, the ack path of scale mode).

``append`` validates each candidate against the namespace's meters as embedded ingest does
(unreadable values and over-cap group values are rejected), then writes every accepted event
with an idempotent producer (``enable.idempotence``, ``acks=all``: a record is acknowledged
once every in-sync replica has it, and the producer's retries never duplicate it). The request's
future resolves only after **every** delivery report succeeded; one failed or missing report
(after ``delivery_timeout``) fails the whole request with ``StorageUnavailable`` (503, retry:
re-sending is safe, the sink counts each key once).

Reading the log is the sink workers' job (:mod:`.partitions`): a Kafka topic has no global
sequence, so ``read`` and ``position`` describe nothing here (empty, 0), and listing events is
answered from ClickHouse's raw table.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from meterline.adapters.kafka import envelope
from meterline.domain.errors import StorageUnavailable
from meterline.domain.events.model import Candidate, Event, Outcome, Status
from meterline.domain.meters.admission import admit_event
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import LedgerEntry
from meterline.ports.ledger import Appended, EventFilter, StoredEvent
from meterline.ports.meters import MeterCatalog
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


class _Request:
    """One append waiting for its delivery reports."""

    def __init__(self, outcomes: list[Outcome], pending: int) -> None:
        self.future: Future[list[Outcome]] = Future()
        self.outcomes = outcomes
        self.pending = pending
        self.lock = threading.Lock()

    def delivered(self, err: Any, _msg: Any) -> None:
        with self.lock:
            if self.future.done():
                return
            if err is not None:
                self.future.set_exception(StorageUnavailable(f"Kafka did not acknowledge an event: {err}"))
                return
            self.pending -= 1
            if self.pending == 0:
                self.future.set_result(Appended(self.outcomes, 0))


class KafkaLedger:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        meters: MeterCatalog,
        now_us: Callable[[], int],
        *,
        cap: int,
        delivery_timeout: float = 30.0,
    ) -> None:
        kafka = import_extra("confluent_kafka", "scale")
        config = producer_config(bootstrap)
        config["message.timeout.ms"] = int(delivery_timeout * 1000)
        self._producer = kafka.Producer(config)
        self._topic = topic
        self._meters = meters
        self._now_us = now_us
        self._cap = cap
        self._groups: dict[tuple[int, str], set[str]] = {}
        self._compiled: dict[int, CompiledMeter] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="meterline-kafka-producer", daemon=True)
        self._poller.start()

    def append(self, namespace: str, candidates: Sequence[Candidate]) -> Future[list[Outcome]]:
        now = self._now_us()
        with self._lock:  # the group values admitted so far are shared by concurrent requests
            outcomes, accepted = self._admit(namespace, candidates)
        request = _Request(outcomes, len(accepted))
        if not accepted:
            request.future.set_result(Appended(outcomes, 0))
            return request.future
        try:
            for ev in accepted:
                self._produce(envelope.key(ev.namespace, ev.subject), envelope.encode(ev, now), request.delivered)
        except Exception as exc:
            request.future.set_exception(StorageUnavailable(f"Kafka produce failed: {type(exc).__name__}"))
        return request.future

    def _admit(self, namespace: str, candidates: Sequence[Candidate]) -> tuple[list[Outcome], list[Event]]:
        """Per candidate its outcome, and the accepted events (validated against the meters)."""
        by_type = self._live(namespace)
        outcomes: list[Outcome] = []
        accepted: list[Event] = []
        for c in candidates:
            ev = c.event
            if ev is None:
                assert c.rejection is not None
                outcomes.append(
                    Outcome(c.index, c.id, c.source, Status.REJECTED, c.rejection.reason, c.rejection.message)
                )
                continue
            admitted = admit_event(by_type.get(ev.type, ()), self._groups, self._cap, ev)
            if not isinstance(admitted, list):
                outcomes.append(Outcome(c.index, ev.id, ev.source, Status.REJECTED, admitted.reason, admitted.message))
                continue
            outcomes.append(Outcome(c.index, ev.id, ev.source, Status.ACCEPTED))
            accepted.append(ev)
        return outcomes, accepted

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

    def _produce(self, key: bytes, value: bytes, on_delivery: Callable[[Any, Any], None]) -> None:
        while True:
            try:
                self._producer.produce(self._topic, value, key, on_delivery=on_delivery)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.05)

    def _poll(self) -> None:
        """Serve delivery reports (each resolves its request's future when the last one arrives)."""
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def _live(self, namespace: str) -> dict[str, builtins.list[CompiledMeter]]:
        by_type: dict[str, builtins.list[CompiledMeter]] = {}
        for meter in self._meters.list(namespace):
            compiled = self._compiled.get(meter.key)
            if compiled is None:
                compiled = self._compiled[meter.key] = CompiledMeter(meter)
            by_type.setdefault(meter.spec.event_type, []).append(compiled)
        return by_type
