"""The aggregator: consumes the ledger in order and keeps the usage store current.

One supervised background loop (``runtime.background.Loop``), woken by every ingest commit.
Each step:

1. reads up to ``chunk`` ledger entries after the stored live offset;
2. replays them through the live meters (``domain.meters.fold``): readings folded into one
   delta per bucket, group values admitted, subjects noted; unreadable events skipped;
3. ``UsageStore.apply`` writes the deltas, the counters' moves and the alerts they fired
   together with the new offset — one transaction, so a crash anywhere re-applies nothing and
   misses nothing: after a restart the loop resumes from the stored offset;
4. then one chunk of a new meter's backfill, the same way, with that meter's own offset.

A refused batch (the offset or the meters changed under it) or a failed one is dropped and
computed again from a fresh snapshot. Readers that must see their own writes call
:meth:`Aggregator.wait_for` with the ledger position their request arrived at.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from meterline.domain.errors import InvalidInput
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import Replay
from meterline.ports.ledger import Ledger
from meterline.ports.usage import Backfill, Batch, Snapshot, UsageStore
from meterline.runtime import freshness
from meterline.runtime.background import Loop, Monitor

log = logging.getLogger("meterline.aggregation")


@dataclass(slots=True)
class Stats:
    """What the aggregator did, for metrics and benchmarks."""

    batches: int = 0
    events: int = 0
    refused: int = 0
    busy_seconds: float = 0.0
    applied_at: float = 0.0
    """``time.monotonic()`` of the last applied live batch."""


class Aggregator:
    def __init__(
        self,
        ledger: Ledger,
        usage: UsageStore,
        *,
        cap: int,
        chunk: int = 20_000,
        monitor: Monitor | None = None,
        idle_poll: float = 1.0,
        gather: float = 0.05,
    ) -> None:
        self._ledger = ledger
        self._usage = usage
        self._cap = cap
        self._chunk = chunk
        self._idle_poll = idle_poll
        self._gather = gather
        """Seconds to let commits accumulate after a wake-up before a step, unless a reader
        waits: under a stream of small commits one batch then covers many of them."""
        self._wake = threading.Event()
        self._urgent = threading.Event()
        self._changed = threading.Event()
        self._closed = False
        self._more = True
        self._snap: Snapshot | None = None
        self._compiled: list[CompiledMeter] = []
        self._position = -1
        self._as_of_us = 0
        self._behind_since: float | None = None
        self._cond = threading.Condition()
        self.stats = Stats()
        self._loop = Loop("aggregator", self._step, self._wait, monitor, error_pause=0.2)

    # -- control ----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._urgent.set()
        self._loop.stop()
        self._loop.join(timeout=10)

    def drain(self) -> None:
        """Aggregate up to the ledger's head on the calling thread (with no loop running):
        for commands that open the store without a server."""
        self._more = True
        while self._more:
            self._step()

    def wake(self, position: int = 0) -> None:
        """New ledger entries up to ``position`` were committed (the ingest commit hook)."""
        if self._behind_since is None and position > self._position:
            self._behind_since = time.monotonic()
        self._wake.set()

    def meters_changed(self) -> None:
        """A meter was created or deleted: reload the meters before the next batch."""
        self._changed.set()
        self._wake.set()

    # -- freshness --------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The live offset: every ledger entry up to it is in the usage store (-1 before the
        first step)."""
        return self._position

    def lag(self) -> int:
        """Committed ledger entries the live offset has not reached yet."""
        return max(0, self._ledger.position() - max(self._position, 0))

    def lag_seconds(self) -> float:
        """How long the live offset has been behind the ledger's head without catching up
        (0 while it is caught up): the age of the oldest entry not aggregated is at most this."""
        since = self._behind_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def wait_for(self, position: int, timeout: float) -> bool:
        """Block until the live offset reaches ``position`` or ``timeout`` seconds passed;
        True when it did. Never blocks the aggregator's own thread."""
        return self.settled(timeout)(lambda: self._position >= position)

    def fresh(self, timeout: float, staleness: float = 0.0) -> Callable[[], None]:
        """A barrier for usage reads: wait for the ledger position current at the call (unless
        the request asked for eventual consistency, or the aggregator is at most ``staleness``
        seconds behind), then note on the request's freshness record which position (and
        ingest time) the answer reflects."""

        def barrier() -> None:
            record = freshness.current()
            position = self._wanted(record, staleness)
            if position is not None:
                if not self.wait_for(position, timeout):
                    log.warning(
                        "usage read without waiting longer for the aggregator",
                        extra={"position": position, "applied": self._position, "waited": timeout},
                    )
            if record is not None:
                with self._cond:
                    record.as_of_position, record.as_of_us = max(self._position, 0), self._as_of_us

        return barrier

    def settled(self, timeout: float) -> Callable[[Callable[[], bool]], bool]:
        """A barrier for reads of a meter that is being backfilled (new, or re-derived after a
        ``groupBy`` change): wait, bounded by ``timeout``, until ``done()`` (checked after every
        applied backfill chunk); True when it is done."""

        def wait(done: Callable[[], bool]) -> bool:
            if done():
                return True
            if threading.current_thread().name == f"meterline-{self._loop.name}" or timeout <= 0:
                return False
            self._urgent.set()
            self._wake.set()
            with self._cond:
                return self._cond.wait_for(done, timeout)

        return wait

    def _wanted(self, record: freshness.Freshness | None, staleness: float) -> int | None:
        """The ledger position a usage read must reflect, or None to answer at once."""
        if record is not None and record.min_log_positions is not None:
            raise InvalidInput(
                "Meterline-Min-Log-Positions is scale mode's; this server has one ledger: send the"
                " Meterline-Ledger-Position of the ingest as Meterline-Min-Position",
                code="invalid_position",
            )
        head = self._ledger.position()
        asked = None if record is None or record.min_position is None else min(record.min_position, head)
        fresh_enough = staleness > 0 and self.lag_seconds() <= staleness
        if (record is None or record.wait) and not fresh_enough:
            return head
        return asked

    # -- the loop ---------------------------------------------------------------------------

    def _wait(self) -> bool:
        if not self._more:
            if self._wake.wait(timeout=self._idle_poll) and self._gather > 0:
                self._urgent.wait(self._gather)  # let more commits join this batch, unless a reader waits
        self._urgent.clear()
        self._wake.clear()  # before the step: a wake-up during it is not lost
        return not self._closed

    def _step(self) -> None:
        self._more = False
        snap = self._snapshot()
        started = time.perf_counter()
        try:
            live = self._live(snap)
            backfill = self._backfill(snap) if snap.backfills else False
        except BaseException:
            self._snap = None  # its caches may hold work that was not applied
            raise
        finally:
            self.stats.busy_seconds += time.perf_counter() - started
        self._more = live or backfill

    def _snapshot(self) -> Snapshot:
        if self._changed.is_set():
            self._changed.clear()
            self._snap = None
        if self._snap is None:
            self._snap = self._usage.snapshot()
            self._compiled = [CompiledMeter(m) for m in self._snap.meters]
            self._publish(self._snap.offset)
        return self._snap

    def _live(self, snap: Snapshot) -> bool:
        """One chunk after the live offset; True when there may be more: a refused batch, or a
        full chunk (a backlog). A chunk that reached the head lets the next step wait for a
        wake-up and gather (under a stream of small commits, one step per ``gather``, not one
        per commit)."""
        if snap.offset >= self._ledger.position():
            return False
        limit = self._chunk if snap.pending_end is None else snap.pending_end - snap.offset
        entries = self._ledger.read(snap.offset, limit)
        if not entries:
            return False
        replay = Replay(self._cap, snap.group_values, snap.subjects, keep=True, count_entries=True)
        replay.apply(self._compiled, entries)
        meters = frozenset(m.meter.key for m in self._compiled)
        versions = frozenset((m.meter.key, m.meter.updated_us) for m in self._compiled)
        batch = Batch(snap.offset, entries[-1].seq, meters, replay, entries=entries, versions=versions)
        if not self._usage.apply(batch):
            self._refused()
            return True
        snap.offset, snap.pending_end = batch.end, None
        self.stats.batches += 1
        self.stats.events += len(entries)
        self.stats.applied_at = time.monotonic()
        self._publish(batch.end, entries[-1].received_us)
        return len(entries) >= limit

    def _backfill(self, snap: Snapshot) -> bool:
        """One chunk of the first backfilling meter; True when there may be more."""
        todo = snap.backfills[0]
        meter = next((m for m in self._compiled if m.meter.key == todo.meter), None)
        if meter is None:
            self._refused()
            return True
        if todo.pending_end is None:  # the next chunk
            last, limit = todo.to, min(self._chunk, todo.to - todo.done)
        else:  # exactly the range a crash left half-written
            last, limit = todo.pending_end, todo.pending_end - todo.done
        entries = [e for e in self._ledger.read(todo.done, limit) if e.seq <= last]
        end = todo.pending_end or (last if len(entries) < limit else entries[-1].seq)
        replay = Replay(self._cap, snap.group_values, snap.subjects)
        replay.apply([meter], entries)
        version = frozenset({(todo.meter, meter.meter.updated_us)})
        batch = Batch(todo.done, end, frozenset({todo.meter}), replay, backfill=todo.meter, versions=version)
        if not self._usage.apply(batch):
            self._refused()
            return True
        if replay.skipped:
            log.info("backfill skipped unreadable events", extra={"meter": meter.meter.slug, "skipped": replay.skipped})
        snap.backfills[0] = Backfill(todo.meter, end, todo.to)
        if end >= todo.to:
            del snap.backfills[0]
        with self._cond:
            self._cond.notify_all()  # readers waiting for this meter's backfill (``settled``)
        return True

    def _refused(self) -> None:
        self.stats.refused += 1
        self._snap = None

    def _publish(self, position: int, received_us: int | None = None) -> None:
        with self._cond:
            if received_us is not None or position != self._position:
                self._as_of_us = received_us or 0  # 0: not known (a position read from the store)
            self._position = position
            self._cond.notify_all()
        if position >= self._ledger.position():
            self._behind_since = None
