"""The ledger topic's partitions as the sink workers read them (``ports.sink.PartitionLog``).

Workers join one consumer group; Kafka spreads the partitions over them and moves a dead
worker's partitions to the others after ``session_timeout_ms``. When a partition is assigned,
reading starts where the sink *store* says it is applied (``start_at``), not at the group's
committed offset: the store is the source of truth, committed offsets only show lag.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meterline.adapters.kafka import envelope
from meterline.adapters.kafka.ledger import ensure_topic
from meterline.domain.errors import StorageUnavailable
from meterline.ports.sink import LogEntry, StartAt
from meterline.runtime.extras import import_extra


def stream_name(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class KafkaPartitions:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        start_at: StartAt,
        *,
        partitions: int = 8,
        replication: int = 1,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1000,
    ) -> None:
        self._kafka = import_extra("confluent_kafka", "scale")
        ensure_topic(bootstrap, topic, partitions, replication)
        self._topic = topic
        self._start_at = start_at
        self._held: set[str] = set()
        self._consumer = self._kafka.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": heartbeat_interval_ms,
                "partition.assignment.strategy": "range",
            }
        )
        self._consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)

    def poll(self, max_entries: int, timeout: float) -> dict[str, list[LogEntry]]:
        try:
            messages = self._consumer.consume(max_entries, timeout)
        except Exception as exc:
            raise StorageUnavailable(f"Kafka consume failed: {type(exc).__name__}") from exc
        out: dict[str, list[LogEntry]] = {}
        for msg in messages:
            if msg.error() is not None:
                if msg.error().code() == self._kafka.KafkaError._PARTITION_EOF:
                    continue
                raise StorageUnavailable(f"Kafka consume failed: {msg.error()}")
            stream = stream_name(msg.topic(), msg.partition())
            if stream in self._held:
                out.setdefault(stream, []).append(envelope.entry(envelope.decode(msg.value()), msg.offset()))
        return out

    def assigned(self) -> set[str]:
        return set(self._held)

    def commit(self, stream: str, done: int) -> None:
        topic, _, partition = stream.rpartition(":")
        offsets = [self._kafka.TopicPartition(topic, int(partition), done)]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except Exception:  # a hint only: the store holds the position
            pass

    def close(self) -> None:
        self._consumer.close()

    def _assigned(self, consumer: Any, partitions: Sequence[Any]) -> None:
        streams = [stream_name(p.topic, p.partition) for p in partitions]
        starts = self._start_at(streams)
        for p, stream in zip(partitions, streams, strict=True):
            p.offset = starts.get(stream, 0)
        self._held |= set(streams)
        consumer.assign(list(partitions))

    def _revoked(self, consumer: Any, partitions: Sequence[Any]) -> None:
        self._held -= {stream_name(p.topic, p.partition) for p in partitions}
        consumer.unassign()
