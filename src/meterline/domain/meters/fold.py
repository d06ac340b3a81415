"""Folding meter readings into rollup deltas and replaying ledger entries through meters.

Pure: no storage. The aggregator (and ``rebuild``) reads ledger entries in sequence order,
evaluates the live meters on each and folds the readings into one delta per (meter, level,
subject, bucket, group) — a 20 000-event chunk for 50 customers becomes 50 upserts per level.
A store then applies the fold (``UsageStore.apply``) together with the consumer's offset.

Replaying follows the rules of live ingest, except that an event a meter cannot read (or
whose group value is over the cardinality cap) is *skipped* for that meter instead of
rejected: it is already in the ledger (accepted before the meter existed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec

from meterline.domain.decimals import add
from meterline.domain.events.corrections import is_void_record
from meterline.domain.events.decode import CloudEventIn
from meterline.domain.events.model import Event, Rejection
from meterline.domain.meters.evaluate import CompiledMeter, Reading
from meterline.domain.meters.gauges import Point, join, state_of
from meterline.domain.meters.model import EVERY_TYPE, Aggregation, type_key
from meterline.domain.meters.windows import BUCKETS

Key = tuple[int, int, str, int, str]
"""(meter, level, subject, bucket start, group key)."""
Unique = tuple[int, int, str, int, str, str]
"""A UNIQUE_COUNT value in a bucket: (meter, level, subject, bucket start, group key, value)."""
Committed = tuple[CompiledMeter, Reading, str, int, int]
"""One reading of a committed event: (meter, reading, subject, event time, ledger seq)."""

_envelope = msgspec.json.Decoder(CloudEventIn, float_hook=Decimal)


# Both are NamedTuples, not frozen dataclasses: one of each is made per event on the ack path
# and per entry read, and a tuple is built several times faster.


class Preread(NamedTuple):
    """The readings ingest took when it accepted an event: ``meters`` are the key and
    definition time (``Meter.updated_us``) of every live meter of the event's namespace and
    type then, ``readings`` those that applied to it, by key (a meter in ``meters`` but not in
    ``readings`` does not count the event)."""

    meters: frozenset[tuple[int, int]]
    readings: dict[int, Reading]


class LedgerEntry(NamedTuple):
    """One accepted event as the ledger holds it (``raw`` is the CloudEvent as received).
    ``read``: what ingest read from it, when the ledger still has that in memory (None: a
    replay decodes ``raw`` and evaluates the meters again)."""

    seq: int
    namespace: str
    source: str
    type: str
    subject: str
    time_us: int
    raw: bytes
    received_us: int = 0
    read: Preread | None = None
    correction: int = 0
    """For a correction entry (``domain.events.corrections``): the seq of the original it
    corrects; 0 for an ordinary event."""
    record: bytes = b""
    """A correction entry's audit record as the chain covers it (``domain.integrity.chain.
    correction_record``), where a partitioned log carries it; empty otherwise."""


def event_data(raw: bytes) -> dict[str, Any] | None:
    """The ``data`` of a stored raw CloudEvent (numbers as Decimal, as at ingest)."""
    data: dict[str, Any] | None = _envelope.decode(raw).data
    return data


class Fold:
    """Per-bucket states of many readings: [count, sum, min, max, (time, seq, value) latest].

    Readings are folded per minute only; the coarser bucket sizes are merged from the minute
    states when the fold is read (:meth:`levels`), so a reading costs one dictionary slot, not
    one per bucket size (exact: every merge is a count, an exact sum, a min, a max or a latest).
    """

    def __init__(self) -> None:
        self.minutes: dict[Aggregation, dict[Key, list[Any]]] = {}
        self.uniques: set[Unique] = set()
        self.sketched: set[Unique] = set()
        """APPROX_UNIQUE_COUNT values per bucket of every size, as ``uniques`` (the store
        keeps a sketch of them: ``domain.meters.sketch``)."""
        self.gauges: dict[Key, list[Point]] = {}
        """TIME_WEIGHTED_SUM readings per minute key (``domain.meters.gauges``): a bucket's
        state needs them in time order, which a ledger chunk need not be."""

    def add(self, aggregation: Aggregation, reading: Reading, subject: str, time_us: int, seq: int) -> None:
        second = time_us // 1_000_000
        if aggregation is Aggregation.UNIQUE_COUNT or aggregation is Aggregation.APPROX_UNIQUE_COUNT:
            assert isinstance(reading.value, str)
            into = self.uniques if aggregation is Aggregation.UNIQUE_COUNT else self.sketched
            for level in BUCKETS:
                into.add((reading.meter_id, level, subject, second - second % level, reading.group_key, reading.value))
            return
        if aggregation is Aggregation.TIME_WEIGHTED_SUM:
            assert isinstance(reading.value, Decimal)
            key = (reading.meter_id, MINUTE, subject, second - second % MINUTE, reading.group_key)
            self.gauges.setdefault(key, []).append((time_us, seq, reading.value))
            return
        states = self.minutes.get(aggregation)
        if states is None:
            states = self.minutes[aggregation] = {}
        value = reading.value
        key = (reading.meter_id, MINUTE, subject, second - second % MINUTE, reading.group_key)
        slot = states.get(key)
        if slot is None:
            states[key] = [1, value, value, value, (time_us, seq, value)]
        else:
            _fold(slot, value, time_us, seq)

    def levels(self, skip: frozenset[Aggregation] = frozenset()) -> dict[Aggregation, dict[Key, list[Any]]]:
        """Every bucket size's states (the minute states merged up into the coarser ones), of
        every aggregation but those in ``skip``."""
        out: dict[Aggregation, dict[Key, list[Any]]] = {}
        for aggregation, minutes in self.minutes.items():
            if aggregation in skip:
                continue
            states = out[aggregation] = dict(minutes)
            for (meter, _, subject, bucket, group), slot in minutes.items():
                for level in COARSER:
                    key = (meter, level, subject, bucket - bucket % level, group)
                    into = states.get(key)
                    if into is None:
                        states[key] = list(slot)
                    else:
                        merge_state(into, slot)
        if self.gauges:
            out[Aggregation.TIME_WEIGHTED_SUM] = _gauge_levels(self.gauges)
        return out

    def clear(self) -> None:
        self.minutes.clear()
        self.uniques.clear()
        self.sketched.clear()
        self.gauges.clear()

    def __bool__(self) -> bool:
        return bool(self.minutes) or bool(self.uniques) or bool(self.sketched) or bool(self.gauges)


def _gauge_levels(gauges: dict[Key, list[Point]]) -> dict[Key, list[Any]]:
    """Gauge states of every bucket size: each minute's from its readings, the coarser ones
    joined from the minutes in time order (minutes of one series never interleave)."""
    states = {key: state_of(points) for key, points in gauges.items()}
    for key in sorted(states, key=lambda k: k[3]):
        meter, _, subject, bucket, group = key
        for level in COARSER:
            up = (meter, level, subject, bucket - bucket % level, group)
            into = states.get(up)
            joined = list(states[key]) if into is None else join(into, states[key])
            assert joined is not None
            states[up] = joined
    return states


COUNT_BUCKET = 900
"""Seconds of the buckets ledger entries are counted in (a quarter hour: every zone's
periods are cut on quarter hours)."""
COUNT_BUCKET_US = COUNT_BUCKET * 1_000_000
MINUTE = min(BUCKETS)
COARSER = tuple(level for level in BUCKETS if level != MINUTE)


def _fold(slot: list[Any], value: Any, time_us: int, seq: int) -> None:
    slot[0] += 1
    if value is None:
        return
    slot[1] = add(slot[1], value)
    if value < slot[2]:
        slot[2] = value
    if value > slot[3]:
        slot[3] = value
    if (time_us, seq) > slot[4][:2]:
        slot[4] = (time_us, seq, value)


def merge_state(into: list[Any], slot: list[Any]) -> None:
    """Merge one bucket state into another of the same aggregation (exact)."""
    into[0] += slot[0]
    if slot[1] is None:
        return
    into[1] = add(into[1], slot[1])
    if slot[2] < into[2]:
        into[2] = slot[2]
    if slot[3] > into[3]:
        into[3] = slot[3]
    if slot[4][:2] > into[4][:2]:
        into[4] = slot[4]


@dataclass
class Replay:
    """Folds ledger entries through a set of meters (see the module doc). ``keep`` also keeps
    every reading (for the committed-usage stream)."""

    cap: int
    group_values: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    subjects: dict[int, set[str]] = field(default_factory=dict)
    fold: Fold = field(default_factory=Fold)
    new_groups: list[tuple[int, str, str]] = field(default_factory=list)
    new_subjects: list[tuple[int, str]] = field(default_factory=list)
    readings: list[Committed] = field(default_factory=list)
    keep: bool = False
    skipped: int = 0
    corrected: set[int] = field(default_factory=set)
    """Originals whose chain got a correction in the replayed entries: a correction is never
    folded, the store recomputes the buckets of every version of the chain from the ledger."""
    count_entries: bool = False
    """Also count every entry (any type) in ``counts``: the live pass over the ledger and a
    full replay do, a new meter's backfill does not (its entries were counted live)."""
    counts: dict[tuple[str, str, int], int] = field(default_factory=dict)
    """(namespace, type, UTC quarter hour of event time in epoch seconds) -> entries."""
    admit_amends: bool = False
    """Admit an amend entry's group values and subject as an event's (its readings are not
    folded): scale mode answers corrected hours from the raw events, through these values."""

    def apply(self, meters: list[CompiledMeter], entries: Iterable[LedgerEntry]) -> int:
        """Apply ledger entries in order; returns the last seq (0 for none)."""
        last = 0
        by_type = by_event_type(meters)
        counts = self.counts if self.count_entries else None
        for entry in entries:
            last = entry.seq
            if entry.correction:  # a correction entry is not an event: it is never counted
                self.corrected.add(entry.correction)
                if self.admit_amends and not is_void_record(entry.raw):
                    self._admit_amend(by_type.get((entry.namespace, entry.type), ()), entry)
                continue
            if counts is not None:
                counted = (entry.namespace, entry.type, entry.time_us // COUNT_BUCKET_US * COUNT_BUCKET)
                counts[counted] = counts.get(counted, 0) + 1
            wanted = of_type(by_type, entry.namespace, entry.type)
            if not wanted:
                continue
            pre = entry.read
            event: Event | None = None
            for meter in wanted:
                key = meter.meter.key
                if pre is not None and (key, meter.meter.updated_us) in pre.meters:
                    # Read at ingest by this very meter definition (a groupBy change makes a
                    # new one); its group values were admitted then and stored in the same commit.
                    reading = pre.readings.get(key)
                    if reading is not None:
                        self._add(meter, reading, entry.subject, entry.time_us, entry.seq)
                    continue
                if event is None:
                    event = Event(
                        entry.namespace,
                        entry.source,
                        "",
                        entry.type,
                        entry.subject,
                        entry.time_us,
                        event_data(entry.raw),
                        entry.raw,
                        b"",
                    )
                if meter.applies(event):
                    self._one(meter, event, entry.seq)
        return last

    def _admit_amend(self, meters: Iterable[CompiledMeter], entry: LedgerEntry) -> None:
        event = Event(
            entry.namespace, entry.source, "", entry.type, entry.subject, entry.time_us, event_data(entry.raw),
            entry.raw, b"",
        )  # fmt: skip
        for meter in meters:
            if not meter.applies(event):
                continue
            reading = meter.read(event)
            if isinstance(reading, Rejection) or not self._admit(meter, reading.groups):
                continue
            subjects = self.subjects.setdefault(meter.meter.key, set())
            if event.subject not in subjects:
                subjects.add(event.subject)
                self.new_subjects.append((meter.meter.key, event.subject))

    def _one(self, meter: CompiledMeter, event: Event, seq: int) -> None:
        reading = meter.read(event)
        if isinstance(reading, Rejection) or not self._admit(meter, reading.groups):
            self.skipped += 1
            return
        self._add(meter, reading, event.subject, event.time_us, seq)

    def _add(self, meter: CompiledMeter, reading: Reading, subject: str, time_us: int, seq: int) -> None:
        self.fold.add(meter.aggregation, reading, subject, time_us, seq)
        if self.keep:
            self.readings.append((meter, reading, subject, time_us, seq))
        subjects = self.subjects.setdefault(meter.meter.key, set())
        if subject not in subjects:
            subjects.add(subject)
            self.new_subjects.append((meter.meter.key, subject))

    def _admit(self, meter: CompiledMeter, groups: tuple[str | None, ...]) -> bool:
        fresh = admit_groups(self.group_values, self.cap, meter, groups)
        if isinstance(fresh, str):
            return False
        self.new_groups.extend(fresh)
        return True


def by_event_type(meters: Iterable[CompiledMeter]) -> dict[tuple[str, str], list[CompiledMeter]]:
    """Meters by (namespace, event type); built-in meters, which count every type, under
    :data:`~meterline.domain.meters.model.EVERY_TYPE` (see :func:`of_type`)."""
    out: dict[tuple[str, str], list[CompiledMeter]] = {}
    for meter in meters:
        out.setdefault((meter.meter.namespace, type_key(meter.meter.spec)), []).append(meter)
    return out


def of_type(by_type: dict[tuple[str, str], list[CompiledMeter]], namespace: str, type_: str) -> list[CompiledMeter]:
    """The meters of :func:`by_event_type` that count events of ``type_`` in ``namespace``."""
    typed = by_type.get((namespace, type_))
    every = by_type.get((namespace, EVERY_TYPE))
    if every is None:
        return typed or []
    return every if typed is None else typed + every


def admit_groups(
    known: dict[tuple[int, str], set[str]],
    cap: int,
    meter: CompiledMeter,
    groups: tuple[str | None, ...],
    refused: frozenset[tuple[int, str, str]] = frozenset(),
) -> list[tuple[int, str, str]] | str:
    """Record the event's new group values, or return the dimension that is over ``cap``
    (recording nothing). A value in ``refused`` is over the cap whatever ``known`` holds (a
    registry shared with other writers refused it)."""
    fresh = []
    for dim, value in zip(meter.dimensions, groups, strict=True):
        seen = known.setdefault((meter.meter.key, dim), set())
        if value is None or value in seen:
            continue
        if len(seen) >= cap or (meter.meter.key, dim, value) in refused:
            return dim
        fresh.append((meter.meter.key, dim, value))
    for key, dim, value in fresh:
        known[(key, dim)].add(value)
    return fresh
