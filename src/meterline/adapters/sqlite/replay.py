"""Replaying the ledger through meters: the backfill of a new meter and ``rebuild``.

Both read ledger events in sequence order and apply them with the rules of live ingest, except
that an event a meter cannot read (or whose group value is over the cap) is *skipped* for that
meter instead of rejected: it was accepted before the meter existed and stays in the ledger.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from meterline.adapters.sqlite.rollups import Deltas
from meterline.domain.events.decode import CloudEventIn
from meterline.domain.events.model import Event, Rejection
from meterline.domain.meters.evaluate import CompiledMeter

_envelope = msgspec.json.Decoder(CloudEventIn, float_hook=Decimal)

CHUNK = 20_000


def event_data(raw: bytes) -> dict[str, Any] | None:
    """The ``data`` of a stored raw CloudEvent (numbers as Decimal, as at ingest)."""
    data: dict[str, Any] | None = _envelope.decode(raw).data
    return data


@dataclass
class Replay:
    """Folds ledger events into rollup deltas for a set of meters."""

    cap: int
    group_values: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    subjects: dict[int, set[str]] = field(default_factory=dict)
    deltas: Deltas = field(default_factory=Deltas)
    new_groups: list[tuple[int, str, str]] = field(default_factory=list)
    new_subjects: list[tuple[int, str]] = field(default_factory=list)
    skipped: int = 0

    def apply(self, meters: list[CompiledMeter], rows: Iterable[tuple[int, str, str, str, str, int, bytes]]) -> int:
        """Apply ledger rows (seq, namespace, source, type, subject, time_us, raw); returns the last seq."""
        last = 0
        for seq, namespace, source, type_, subject, time_us, raw in rows:
            last = seq
            data = event_data(raw)
            event = Event(namespace, source, "", type_, subject, time_us, data, raw, b"")
            for meter in meters:
                if meter.meter.namespace == namespace and meter.applies(event):
                    self._one(meter, event, seq)
        return last

    def _one(self, meter: CompiledMeter, event: Event, seq: int) -> None:
        reading = meter.read(event)
        if isinstance(reading, Rejection) or not self._admit(meter, reading.groups):
            self.skipped += 1
            return
        self.deltas.add(meter.aggregation, reading, event.subject, event.time_us, seq)
        subjects = self.subjects.setdefault(meter.meter.key, set())
        if event.subject not in subjects:
            subjects.add(event.subject)
            self.new_subjects.append((meter.meter.key, event.subject))

    def _admit(self, meter: CompiledMeter, groups: tuple[str | None, ...]) -> bool:
        fresh = admit_groups(self.group_values, self.cap, meter, groups)
        if isinstance(fresh, str):
            return False
        self.new_groups.extend(fresh)
        return True

    def flush(self, conn: sqlite3.Connection, prefix: str = "") -> None:
        self.deltas.flush(conn, prefix)
        conn.executemany(f"INSERT OR IGNORE INTO {prefix}group_values VALUES (?,?,?)", self.new_groups)
        conn.executemany(f"INSERT OR IGNORE INTO {prefix}meter_subjects VALUES (?,?)", self.new_subjects)
        self.new_groups.clear()
        self.new_subjects.clear()


def admit_groups(
    known: dict[tuple[int, str], set[str]], cap: int, meter: CompiledMeter, groups: tuple[str | None, ...]
) -> list[tuple[int, str, str]] | str:
    """Record the event's new group values, or return the dimension that is over ``cap``
    (recording nothing)."""
    fresh = []
    for dim, value in zip(meter.dimensions, groups, strict=True):
        seen = known.setdefault((meter.meter.key, dim), set())
        if value is None or value in seen:
            continue
        if len(seen) >= cap:
            return dim
        fresh.append((meter.meter.key, dim, value))
    for key, dim, value in fresh:
        known[(key, dim)].add(value)
    return fresh


def ledger_rows(conn: sqlite3.Connection, after: int, upto: int) -> list[tuple[int, str, str, str, str, int, bytes]]:
    return conn.execute(
        "SELECT seq, namespace, source, type, subject, time_us, raw FROM events"
        " WHERE seq > ? AND seq <= ? ORDER BY seq",
        (after, upto),
    ).fetchall()
