"""One accepted event as a Kafka record: keyed by namespace and subject (a customer's events
stay in one partition, in order), the value a msgpack envelope with the raw CloudEvent."""

from __future__ import annotations

import msgspec

from meterline.domain.events.model import Event
from meterline.domain.meters.fold import LedgerEntry
from meterline.ports.sink import LogEntry


class Record(msgspec.Struct, array_like=True, frozen=True):
    namespace: str
    source: str
    id: str
    type: str
    subject: str
    time_us: int
    received_us: int
    raw: bytes
    token: str = ""
    """The ack-time dedupe claim the event was written under (empty without a dedupe store)."""
    released: bool = False
    """Written by the quarantine's releaser (``ports.quarantine``): counts only as the first copy."""
    corrects: int = 0
    """A correction entry (``ports.correction_log``): the seq of the version it supersedes in
    this partition; 0 for an event."""
    record: bytes = b""
    """A correction entry's audit record (action, original, reason, actor) as the hash chain
    covers it (``domain.integrity.chain.correction_record``); empty for an event, and in
    records written before the chain covered it."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def key(namespace: str, subject: str) -> bytes:
    return f"{namespace}\x1f{subject}".encode()


def encode(
    event: Event, received_us: int, token: str = "", *, released: bool = False, corrects: int = 0, record: bytes = b""
) -> bytes:
    value = Record(
        event.namespace, event.source, event.id, event.type, event.subject, event.time_us, received_us, event.raw,
        token, released, corrects, record,
    )  # fmt: skip
    return _encoder.encode(value)


def decode(value: bytes) -> Record:
    return _decoder.decode(value)


def entry(record: Record, offset: int) -> LogEntry:
    """The log entry of the record at ``offset`` of its partition (``seq = offset + 1``)."""
    ledger_entry = LedgerEntry(
        offset + 1, record.namespace, record.source, record.type, record.subject, record.time_us, record.raw,
        record.received_us, None, record.corrects, record.record,
    )  # fmt: skip
    return LogEntry(ledger_entry, record.id, record.token, record.released)
