"""The live usage counters of scale mode (``ports.live_usage``), fed by the sink workers and
read by entitlement values and checks on the API nodes.

Feeding (:class:`CounterFeed`, a ``ports.sink.BatchFollower`` of every sink worker):

1. after a batch is durably applied, its counted events are folded through the live SUM and
   COUNT meters exactly as the worker folded them (``domain.meters.fold.Replay``, group values
   admitted against the same known values under the same cap), into per-minute usage per
   (meter, subject);
2. for each meter, only the events past the meter's position in the counters are kept, and
   the counters add them and move the position to the batch's end in one atomic step that
   fails when the position moved meanwhile: a range added twice (a worker redoing it, two
   workers over a rebalance) adds nothing;
3. a meter the counters do not hold from the stream's start (a new meter, a Redis that lost
   its keys) has no position or one behind the batch: the worker first hands the feed the
   stream's applied raw events from the lowest position (``services.sink``), so the counters
   are rebuilt from the stream itself. A counters outage never stops the worker: the feed logs
   it and the next batch catches up.

Reading (:class:`CountedUsage`, a ``ports.meters.UsageReader``): an entitlement's usage (a
SUM or COUNT meter, whole minutes, its subjects, no group filter) is answered from the
counters once they hold the meter on every partition up to what this node acknowledged
(``consistency=strong``, waiting at most ``max_wait``); any other query, a meter the counters
do not hold on every partition, a counters outage, or usage that event corrections touch (the
counters fold no correction: ``adapters.clickhouse.corrections``) is answered by the usage store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from decimal import Decimal

from meterline.domain.decimals import EXACT
from meterline.domain.errors import StorageUnavailable
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import LedgerEntry, Replay
from meterline.domain.meters.minutes import MINUTE_US
from meterline.domain.meters.model import Aggregation, Meter, type_key
from meterline.domain.meters.query import MeterQuery, Row
from meterline.ports.live_usage import UsageCounters
from meterline.ports.meters import UsageReader
from meterline.runtime import freshness

log = logging.getLogger("meterline.counters")
COUNTED = frozenset({Aggregation.SUM, Aggregation.COUNT})
ONE = Decimal(1)
Known = Callable[[Sequence[int]], tuple[dict[tuple[int, str], set[str]], dict[int, set[str]]]]
Corrected = Callable[[str, str, Sequence[str], int, int], bool]
"""(namespace, event type, subjects, start µs, end µs) -> whether corrections touch that usage."""


class CounterFeed:
    """Adds each applied range of a stream to the live usage counters (module docstring)."""

    def __init__(
        self, counters: UsageCounters, meters: Callable[[], Sequence[Meter]], known: Known, *, cap: int
    ) -> None:
        """``known``: the group values the sink store admitted per meter (``SinkStore.known``)."""
        self._counters = counters
        self._meters = meters
        self._known = known
        self._cap = cap

    def done(self, stream: str, applied: int) -> int:
        meters = self._counted()
        if not meters:
            return applied
        try:
            positions = self._counters.positions(stream, [m.meter.key for m in meters])
            if applied == 0 and None in positions.values():  # an empty stream: held from its start
                self._counters.add(stream, {m: (at, 0) for m, at in positions.items() if at is None}, {})
                return 0
        except StorageUnavailable:
            log.warning("live usage counters unavailable; the next batch catches up", extra={"stream": stream})
            return applied
        return min(p or 0 for p in positions.values())

    def follow(self, stream: str, start: int, end: int, entries: Sequence[LedgerEntry]) -> None:
        meters = {m.meter.key: m for m in self._counted()}
        if not meters:
            return
        try:
            positions = self._counters.positions(stream, list(meters))
            by_position: dict[int | None, list[CompiledMeter]] = {}
            for key, at in positions.items():
                if start <= (at or 0) < end:  # behind it: a catch-up hands it over first
                    by_position.setdefault(at, []).append(meters[key])
            for at, group in by_position.items():
                self._add(stream, at, end, group, [e for e in entries if e.seq > (at or 0)])
        except StorageUnavailable:
            log.warning("live usage counters unavailable; the next batch catches up", extra={"stream": stream})

    def _add(
        self, stream: str, at: int | None, end: int, meters: list[CompiledMeter], entries: list[LedgerEntry]
    ) -> None:
        dimensioned = [m.meter.key for m in meters if m.dimensions]
        groups, subjects = self._known(dimensioned) if dimensioned else ({}, {})
        replay = Replay(self._cap, groups, subjects, keep=True)
        replay.apply(meters, entries)
        deltas: dict[tuple[int, str], dict[int, Decimal]] = {}
        for meter, reading, subject, time_us, _ in replay.readings:
            value = ONE if meter.aggregation is Aggregation.COUNT else reading.value
            assert isinstance(value, Decimal)
            minutes = deltas.setdefault((meter.meter.key, subject), {})
            minute = time_us // MINUTE_US
            minutes[minute] = EXACT.add(minutes[minute], value) if minute in minutes else value
        self._counters.add(stream, {m.meter.key: (at, end) for m in meters}, deltas)

    def _counted(self) -> list[CompiledMeter]:
        return [CompiledMeter(m) for m in self._meters() if m.spec.aggregation in COUNTED]


class CountedUsage:
    """Entitlement usage from the live counters, else from the usage store (module docstring)."""

    def __init__(
        self,
        counters: UsageCounters,
        streams: dict[int, str],
        heads: Callable[[], dict[int, int]],
        store: UsageReader,
        max_wait: float,
        pause: float = 0.005,
        corrected: Corrected | None = None,
    ) -> None:
        """``streams``: every partition's stream name; ``heads``: per partition, where this
        node's acknowledged writes end; ``store``: the usage store's reader; ``corrected``:
        whether corrections touch a meter's usage in a range (the counters fold none, so such
        a read goes to the store)."""
        self._corrected = corrected
        self._counters = counters
        self._streams = streams
        self._heads = heads
        self._store = store
        self._max_wait = max_wait
        self._pause = pause

    def query(self, meter: Meter, query: MeterQuery) -> list[Row]:
        if not _answerable(meter, query):
            return self._store.query(meter, query)
        assert query.start is not None and query.end is not None
        try:
            if not self._holds(meter):
                return self._store.query(meter, query)
            # after the wait: what the counters hold, the workers had stored with its corrections
            if self._corrected is not None and self._corrected(
                meter.namespace, type_key(meter.spec), query.subjects, query.start * 1_000_000, query.end * 1_000_000
            ):
                return self._store.query(meter, query)
            total = self._counters.total(meter.key, query.subjects, query.start // 60, query.end // 60)
        except StorageUnavailable:
            return self._store.query(meter, query)
        return [Row(query.start, query.end, None, {}, total)]

    def _holds(self, meter: Meter) -> bool:
        """Whether the counters hold ``meter`` on every partition, as far as the request's
        freshness asks (noted on it); False sends the read to the usage store."""
        record = freshness.current()
        wanted = dict(self._heads()) if record is None or record.wait else {}
        for partition, offset in ((record.min_log_positions if record else None) or {}).items():
            wanted[partition] = max(wanted.get(partition, 0), offset)  # Meterline-Min-Log-Positions
        deadline = time.monotonic() + self._max_wait
        while True:
            held = self._counters.held(list(self._streams.values()), meter.key)
            at = {p: held[s] for p, s in self._streams.items()}
            if any(v is None for v in at.values()):
                return False
            if all((at[p] or 0) >= head for p, head in wanted.items() if p in at):
                if record is not None:
                    record.as_of_position = sum(v or 0 for v in at.values())
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self._pause)


def _answerable(meter: Meter, query: MeterQuery) -> bool:
    """An entitlement's period total: a SUM or COUNT meter, whole minutes, subjects named, no
    windows, groups or filters."""
    return (
        meter.spec.aggregation in COUNTED
        and query.window_size is None
        and not query.group_by
        and not query.filters
        and bool(query.subjects)
        and query.start is not None
        and query.end is not None
        and query.start % 60 == 0
        and query.end % 60 == 0
        and query.start_us is None
        and query.end_us is None
    )
