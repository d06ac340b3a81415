"""The sink worker of scale mode (``meterline worker``): consumes log partitions and keeps the
raw events and usage rollups of the sink store, exactly once.

Each step:

1. polls up to ``max_entries`` entries of the assigned partitions (a partition starts, when it
   is assigned, at the position the *store* recorded — not at the log's committed offset);
   before its first write to a partition the worker takes a new epoch of it from the fence
   (``StreamFence.acquire``), then reads the stored position: a previous holder still running
   (paused past its session timeout) is refused from then on;
2. per partition, takes the entries after the stored position as one batch — or, when the
   store recorded a range a dead writer left unfinished, exactly that range (waiting for its
   last entry if need be), so the batch and its insert tokens are the same as before the crash;
3. keeps the events whose ack-time claim holds (``DedupeStore.confirm`` of the token each was
   written under: a copy written by a node that lost its claim is skipped, and one whose node
   died before confirming is confirmed here — reading it proves it durable; the answer for a
   token and key never changes, so a batch redone after a crash keeps the same events); of the
   quarantine's released copies, only the first copy of each event read, by log position
   (``ports.quarantine``: a releaser that died after writing writes it again), and
   evaluates the live meters on them (``domain.meters.fold.Replay``: readings folded per bucket,
   group values admitted under the cardinality cap);
4. ``SinkStore.write`` records the range, checks the epoch, inserts raw events and rollups
   under tokens derived from the range, then records the new position (a refused write makes
   the worker take a new epoch and read the position again);
5. hands the range to the followers (``ports.sink.BatchFollower``: alert rules), each of which
   records how far it got;
6. commits the partition's offset to the log (for lag metrics; a crash before it only makes the
   next consumer re-read entries the store skips).

A worker that takes a stream over (at start, on a rebalance, after a failed step) first hands
each follower the ranges the store applied beyond the follower's recorded progress, read back
from the store's raw events: a worker killed between step 4 and a follower's record leaves
those ranges to the next owner, so nothing a follower must see is skipped, and followers make
handling a range twice harmless.

An erased entry (``ports.erasure.ErasedEntries``: an erasure rewrote it in the store, and the
log's record of it cannot be rewritten) is applied in its erased form whenever a worker reads
the record again (a store rebuilt from the log, a range redone): it counts as it did, under the
pseudonym, without its original key. The worker reads which seqs are erased when it takes a
new epoch of a stream; an erasure holds every stream (raising every epoch) while it erases,
so every write after it is made under an epoch taken after it.

A meter created after a partition has entries counts them through a backfill: the store
records, with the first batch that applies the meter, what the partition held before it
(``SinkStore.backfills``); the partition's owner then folds those entries from the store's
raw events, in order, a chunk at a time, through the meter alone, exactly once by the same
range protocol (a chunk redone after a crash is the same range).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meterline.domain.errors import StorageUnavailable
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import LedgerEntry, Replay
from meterline.domain.meters.model import Meter
from meterline.ports.dedupe import DedupeStore, EventKey
from meterline.ports.erasure import ErasedEntries, ErasedEntry
from meterline.ports.quarantine import Copy, ReleasedCopies
from meterline.ports.sink import BatchFollower, LogEntry, PartitionLog, Position, SinkStore, StreamFence

log = logging.getLogger("meterline.sink")


@dataclass(slots=True)
class SinkStats:
    batches: int = 0
    events: int = 0
    refused: int = 0
    skipped: int = 0
    """Copies whose ack-time claim was lost (another copy of the key counts)."""


class SinkWorker:
    def __init__(
        self,
        partitions: PartitionLog,
        store: SinkStore,
        meters: Callable[[], Sequence[Meter]],
        dedupe: DedupeStore,
        fence: StreamFence,
        *,
        cap: int,
        copies: ReleasedCopies | None = None,
        max_entries: int = 20_000,
        poll_timeout: float = 0.2,
        meters_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        followers: Sequence[BatchFollower] = (),
        erased: ErasedEntries | None = None,
    ) -> None:
        """``meters_every``: how often (seconds) an idle worker looks for new meters to backfill;
        ``followers``: what each applied range is handed to, in order; ``erased``: the entries
        erasures rewrote (written in their erased form when read again)."""
        self._log = partitions
        self._store = store
        self._meters = meters
        self._dedupe = dedupe
        self._copies = copies
        self._fence = fence
        self._epochs: dict[str, int] = {}
        self._cap = cap
        self._max = max_entries
        self._timeout = poll_timeout
        self._carry: dict[str, list[LogEntry]] = {}
        self._positions: dict[str, Position] = {}
        self._compiled: dict[int, CompiledMeter] = {}
        self._known: tuple[dict[tuple[int, str], set[str]], dict[int, set[str]]] | None = None
        self._stop = threading.Event()
        self._every = meters_every
        self._clock = clock
        self._looked = -meters_every
        self._held: set[str] = set()
        self._erased = erased
        self._erased_through: dict[str, int] = {}
        self.followers: list[BatchFollower] = list(followers)
        """What each applied range is handed to, in order."""
        self._new_meters = False
        self._backfilling = True
        """Backfills may be unfinished on the held streams (a new meter, a new assignment, or
        the last look found some)."""
        self.stats = SinkStats()

    def run(self, error_pause: float = 1.0) -> None:
        """Step until :meth:`stop`. A failed step (a store or log error) is logged and retried
        from the store's positions after ``error_pause`` seconds."""
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("sink step failed; retrying from the stored positions")
                self._positions.clear()
                self._epochs.clear()
                self._known = None
                self._stop.wait(error_pause)

    def stop(self) -> None:
        self._stop.set()

    def step(self) -> int:
        """One poll and the batches it completes; how many entries were applied."""
        for stream, entries in self._log.poll(self._max, self._timeout).items():
            self._carry.setdefault(stream, []).extend(entries)
        held = self._log.assigned()
        for stream in [s for s in self._carry if s not in held]:  # revoked: its new owner goes on
            del self._carry[stream]
            self._positions.pop(stream, None)
            self._epochs.pop(stream, None)
        for stream in sorted(held - self._positions.keys()):  # taken over: the followers catch up first
            self._position(stream)
        if self._new_meters:  # followers that count per meter catch up on idle streams too
            self._new_meters = False
            for stream, position in sorted(self._positions.items()):
                for follower in self.followers:
                    self._catch_up(follower, stream, position.done)
        applied = sum(self._flush(stream) for stream in list(self._carry))
        if held != self._held:
            self._held, self._backfilling = set(held), True
        if self._clock() - self._looked >= self._every:  # an idle worker notices new meters too
            self._looked = self._clock()
            self._live()
        return applied + (self._backfill(held) if self._backfilling and held else 0)

    def _flush(self, stream: str) -> int:
        position = self._position(stream)
        if position is None:
            return 0  # maintenance holds the stream (meterline rebuild): its entries wait
        entries = [e for e in self._carry[stream] if e.entry.seq > position.done]
        if position.pending_end is not None:
            batch = [e for e in entries if e.entry.seq <= position.pending_end]
            if not batch or batch[-1].entry.seq < position.pending_end:
                self._carry[stream] = entries
                return 0  # the recorded range is not all read yet
        else:
            batch = entries
        if not batch:
            self._carry[stream] = entries
            return 0
        end = position.pending_end or batch[-1].entry.seq
        counted = self._confirmed(stream, self._erasing(stream, batch, position.done, end))
        compiled = self._live()
        groups, subjects = self._known_dims(compiled)
        replay = Replay(self._cap, groups, subjects, admit_amends=True)
        replay.apply(compiled, counted)
        live = frozenset(m.meter.key for m in compiled)
        if not self._store.write(stream, self._epochs[stream], position.done, end, live, replay, counted):
            self.stats.refused += 1
            self._positions.pop(stream, None)
            self._epochs.pop(stream, None)
            self._known = None
            return 0
        self._carry[stream] = entries[len(batch) :]
        self._positions[stream] = Position(end)
        for follower in self.followers:
            self._catch_up(follower, stream, position.done)  # one that fell behind (a new meter, an outage)
            follower.follow(stream, position.done, end, counted)
        self._log.commit(stream, end)
        self.stats.batches += 1
        self.stats.events += len(counted)
        self.stats.skipped += len(batch) - len(counted)
        return len(batch)

    def _backfill(self, held: set[str]) -> int:
        """One chunk of each unfinished backfill of the held streams; how many entries it folded."""
        folded = 0
        for stream in sorted(held & self._epochs.keys()):
            if not self._fence.holds(stream, self._epochs[stream]):  # a maintenance hold (rebuild, erasure) ended it
                self._positions.pop(stream, None)
                self._epochs.pop(stream, None)
        epochs = {s: self._epochs[s] for s in sorted(held) if self._position(s) is not None}
        pending = self._store.backfills(epochs, frozenset(self._compiled))
        self._backfilling = bool(pending) or len(epochs) < len(held)  # held off: look again later
        for b in pending:
            compiled = self._compiled.get(b.meter)
            if compiled is None:
                continue  # not live in this worker's view yet: its next batch brings it
            end = b.pending_end if b.pending_end is not None else b.to
            entries = self._store.entries(b.stream, b.done, end, self._max)
            if b.pending_end is None and len(entries) == self._max:
                end = entries[-1].seq  # a chunk; the rest in the next step
            groups, subjects = self._store.known([b.meter])
            replay = Replay(self._cap, groups, subjects, admit_amends=True)
            replay.apply([compiled], entries)
            if self._store.write_backfill(b.meter, b.stream, epochs[b.stream], b.done, end, replay):
                folded += len(entries)
                self._known = None  # the backfill's group values and subjects count toward the cap
            else:
                self._positions.pop(b.stream, None)
                self._epochs.pop(b.stream, None)
        return folded

    def _confirmed(self, stream: str, batch: list[LogEntry]) -> list[LedgerEntry]:
        """The entries whose claim holds, in order (those written without a claim count); of
        the quarantine's released copies, only the first copy of each event (``ports.quarantine``)."""
        by_token: dict[str, list[LogEntry]] = {}
        for e in batch:
            if e.token:
                by_token.setdefault(e.token, []).append(e)
        lost: set[int] = set()
        for token, entries in by_token.items():
            keys = [EventKey(e.entry.namespace, e.entry.source, e.id, b"") for e in entries]
            held = self._dedupe.confirm(token, keys)
            lost.update(e.entry.seq for e, ok in zip(entries, held, strict=True) if not ok)
        released = [e for e in batch if e.released and e.entry.seq not in lost]
        if released:
            if self._copies is None:
                raise StorageUnavailable("a released copy needs the quarantine store to be counted")
            copies = [
                Copy(e.entry.namespace, e.entry.source, e.id, e.token, f"{stream}@{e.entry.seq}") for e in released
            ]
            first = self._copies.settle(copies)
            lost.update(e.entry.seq for e, ok in zip(released, first, strict=True) if not ok)
        return [e.entry for e in batch if e.entry.seq not in lost]

    def _erasing(self, stream: str, batch: list[LogEntry], start: int, end: int) -> list[LogEntry]:
        """``batch`` with each erased entry in its erased form (no claim: it counted before)."""
        if self._erased is None or start >= self._erased_through.get(stream, 0):
            return batch
        erased = self._erased.within(stream, start, end)
        return [e if e.entry.seq not in erased else _erased_entry(erased[e.entry.seq]) for e in batch]

    def _position(self, stream: str) -> Position | None:
        """The stream's stored position, read after taking a new epoch of it (so a range the
        previous holder recorded before its last fence check is seen); None while maintenance
        holds it."""
        position = self._positions.get(stream)
        if position is None:
            epoch = self._fence.acquire(stream)
            if epoch is None:
                return None
            self._epochs[stream] = epoch
            self._backfilling = True  # a stream taken (again) may have backfills to go on with
            if self._erased is not None:  # erasures before this epoch: all of them (module doc)
                self._erased_through = self._erased.through()
            position = self._store.positions([stream])[stream]
            for follower in self.followers:
                self._catch_up(follower, stream, position.done)
            self._positions[stream] = position
        return position

    def _catch_up(self, follower: BatchFollower, stream: str, done: int) -> None:
        """Hand ``follower`` what the store applied of ``stream`` beyond its progress, a chunk
        at a time, read back from the raw events (the counted ones: what the batches held)."""
        at = follower.done(stream, done)
        while at < done:
            entries = self._store.entries(stream, at, done, self._max)
            end = entries[-1].seq if len(entries) == self._max else done
            log.info("handing applied entries to a follower", extra={"stream": stream, "from": at, "to": end})
            follower.follow(stream, at, end, entries)
            at = end

    def _live(self) -> list[CompiledMeter]:
        live = {m.key: m for m in self._meters()}
        for key in self._compiled.keys() - live.keys():
            del self._compiled[key]
            self._known = None
        for key, meter in live.items():
            if key not in self._compiled:
                self._compiled[key] = CompiledMeter(meter)
                self._known = None
                self._backfilling = self._new_meters = True
        return list(self._compiled.values())

    def _known_dims(self, compiled: list[CompiledMeter]) -> tuple[dict[tuple[int, str], set[str]], dict[int, set[str]]]:
        """The meters' seen group values and subjects: read once, then kept current by the
        batches' replays (which add to these very sets)."""
        if self._known is None:
            self._known = self._store.known([m.meter.key for m in compiled])
        return self._known


def _erased_entry(e: ErasedEntry) -> LogEntry:
    entry = LedgerEntry(e.seq, e.namespace, "", e.type, e.subject, e.time_us, e.raw, e.received_us, None, e.corrects)
    return LogEntry(entry, e.id, "")
