"""Where recorded events wait for delivery: the disk spool, or a bounded memory queue.

Both keep the order of ``append`` and hand out one batch at a time: ``read`` a batch, deliver
it, ``ack`` it (delivered or given up). ``open_spool`` picks a spool *slot*: a producer
directory holds one ``slot-N`` spool per live process, so several worker processes of one app
can share a configured directory, and a slot left by a dead process is taken over (and its
events sent) by the next process that starts, or by ``meterline replay``.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Protocol

from meterline.client.spool import Batch, Position, Spool, SpoolLocked, TornRecord


class Store(Protocol):
    @property
    def pending(self) -> int:
        """Events appended and neither acknowledged nor given up on."""
        ...

    @property
    def torn(self) -> list[TornRecord]: ...

    def append(self, payload: bytes) -> str | None:
        """None when kept; else the reason it was not (``queue_full``, ``spool_full``, ``too_large``)."""
        ...

    def read(self, max_records: int, max_bytes: int) -> Batch: ...

    def ack(self, batch: Batch) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class MemoryQueue:
    """At most ``capacity`` events waiting in memory; the batch being delivered is outside it."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[bytes] = deque()
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return len(self._items) + self._in_flight

    @property
    def torn(self) -> list[TornRecord]:
        return []

    def append(self, payload: bytes) -> str | None:
        with self._lock:
            if len(self._items) >= self._capacity:
                return "queue_full"
            self._items.append(payload)
        return None

    def read(self, max_records: int, max_bytes: int) -> Batch:
        payloads: list[bytes] = []
        size = 0
        with self._lock:
            while self._items and len(payloads) < max_records and (size < max_bytes or not payloads):
                if payloads and size + len(self._items[0]) > max_bytes:
                    break
                payloads.append(self._items.popleft())
                size += len(payloads[-1])
            self._in_flight = len(payloads)
        return Batch(payloads, Position(0, 0))

    def ack(self, batch: Batch) -> None:
        with self._lock:
            self._in_flight = 0

    def drain(self) -> int:
        """Forget everything waiting (at close); how many events that was."""
        with self._lock:
            n = len(self._items) + self._in_flight
            self._items.clear()
            self._in_flight = 0
        return n

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def slots(directory: Path) -> list[Path]:
    """The spool slots of a producer directory, in slot order."""
    found = [p for p in directory.glob("slot-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def open_spool(directory: Path, segment_bytes: int, max_bytes: int) -> Spool:
    """The first slot of ``directory`` no live process owns (a new one if all are owned)."""
    directory.mkdir(parents=True, exist_ok=True)
    taken = slots(directory)
    for path in taken:
        try:
            return Spool(path, segment_bytes=segment_bytes, max_bytes=max_bytes)
        except SpoolLocked:
            continue
    n = int(taken[-1].name[5:]) + 1 if taken else 0
    while True:
        try:
            return Spool(directory / f"slot-{n}", segment_bytes=segment_bytes, max_bytes=max_bytes)
        except SpoolLocked:  # another process created it a moment ago
            n += 1
