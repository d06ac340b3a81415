"""What the sink workers of scale mode consume and write: a partitioned log, and a store that
applies ranges of it exactly once.

A *stream* is one partition of the log (``"<topic>:<partition>"``). Its entries carry
``seq = offset + 1``, so a range ``(start, end]`` of seqs is the offsets ``start .. end - 1``,
and a stream's position ``done`` is the next offset to read (Kafka's committed-offset meaning).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from meterline.domain.meters.fold import LedgerEntry, Replay


@dataclass(frozen=True, slots=True)
class LogEntry:
    """An entry as the log holds it: the ledger entry, its event id and the ack-time dedupe
    claim it was written under (``ports.dedupe``; empty when written without one)."""

    entry: LedgerEntry
    id: str
    token: str
    released: bool = False
    """A copy written by the quarantine's releaser (``ports.quarantine``): it counts only if
    ``ReleasedCopies.settle`` says it is the first copy."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a stream stands in the sink store."""

    done: int
    """Every entry with ``seq <= done`` is applied (the next offset to read)."""
    pending_end: int | None = None
    """A range ``(done, pending_end]`` recorded and not finished (a writer died in it): the
    next write of this stream must be exactly that range."""


class PartitionLog(Protocol):
    def poll(self, max_entries: int, timeout: float) -> dict[str, list[LogEntry]]:
        """Entries read since the last poll from the assigned streams, per stream in order (at
        most ``max_entries`` in all; empty after ``timeout`` seconds without any)."""
        ...

    def assigned(self) -> set[str]:
        """The streams this consumer holds now (they move between workers on rebalances)."""
        ...

    def commit(self, stream: str, done: int) -> None:
        """Tell the log the stream is applied up to ``done`` (for lag metrics and as a hint:
        where a stream starts on assignment is the sink store's ``positions``)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StreamBackfill:
    """What a meter still lacks of one stream: the entries ``(done, to]`` the stream held when
    the meter was first applied to it (they were folded before the meter existed)."""

    meter: int
    stream: str
    done: int
    to: int
    pending_end: int | None = None
    """A range ``(done, pending_end]`` recorded and not finished: the next write is exactly it."""


class StreamFence(Protocol):
    """Who may write a stream now: an *epoch* per stream that only grows. A worker takes a new
    epoch when it starts writing a stream; a write whose epoch is no longer the stream's is a
    zombie's (a worker paused past its session timeout while another took the stream over) and
    writes nothing (the store checks it between recording a range and inserting it)."""

    def acquire(self, stream: str) -> int | None:
        """A new epoch for ``stream``, higher than any before (the previous holder's writes are
        refused from now on); None while maintenance (``meterline rebuild``) holds every stream."""
        ...

    def holds(self, stream: str, epoch: int) -> bool:
        """``epoch`` is still ``stream``'s newest."""
        ...


StartAt = Callable[[Sequence[str]], dict[str, int]]
"""Given newly assigned streams, where to start reading each (the store's ``done``)."""


class SinkStore(Protocol):
    def positions(self, streams: Sequence[str]) -> dict[str, Position]:
        """Each stream's position (``done = 0`` for a stream never written)."""
        ...

    def known(self, meters: Sequence[int]) -> tuple[dict[tuple[int, str], set[str]], dict[int, set[str]]]:
        """The group values (by meter and dimension) and subjects (by meter) the meters have seen."""
        ...

    def write(
        self,
        stream: str,
        epoch: int,
        start: int,
        end: int,
        meters: frozenset[int],
        replay: Replay,
        entries: Sequence[LedgerEntry],
    ) -> bool:
        """Apply ``entries`` (the range ``(start, end]``), folded through ``meters`` into
        ``replay``, exactly once: raw events and usage together with the new position. False,
        writing nothing, when the stream is not at ``start``, a recorded range ends elsewhere,
        ``meters`` are not the live meters (the batch must be computed again), or ``epoch``
        (:class:`StreamFence`) is no longer the stream's.

        A live meter applied to the stream for the first time gets a backfill of what the
        stream held before this range (:meth:`backfills`)."""
        ...

    def backfills(self, streams: Mapping[str, int], meters: frozenset[int]) -> list[StreamBackfill]:
        """The unfinished backfills of live meters on ``streams`` (held under the epochs given),
        once each of ``meters`` not yet applied to a stream has its backfill started there (up to
        the stream's position: only the stream's one writer may call this, between its writes)."""
        ...

    def entries(self, stream: str, after: int, end: int, limit: int) -> list[LedgerEntry]:
        """The applied entries of ``stream`` with ``after < seq <= end``, in order, at most ``limit``."""
        ...

    def write_backfill(self, meter: int, stream: str, epoch: int, start: int, end: int, replay: Replay) -> bool:
        """Apply the range ``(start, end]`` of a meter's backfill on ``stream``, folded into
        ``replay``, exactly once (as :meth:`write`). False, writing nothing, when the backfill is
        not at ``start``, a recorded range ends elsewhere, ``end`` is past its end, or
        ``epoch`` is no longer ``stream``'s."""
        ...


class BatchFollower(Protocol):
    """Work that follows each durably applied batch of a stream (alert rules, live counters):
    the sink worker hands it every range after :meth:`SinkStore.write` succeeded, and on
    taking a stream over, the ranges the store holds beyond the follower's :meth:`done` (a
    worker died between its write and the follower). Handling a range twice must change
    nothing the first handling did not."""

    def done(self, stream: str, applied: int) -> int:
        """Every range of ``stream`` ending at or before this was handled (0: none), given that
        the store has applied it up to ``applied`` (a follower with nothing to do for the
        ranges in between may record them as handled and answer ``applied``)."""
        ...

    def follow(self, stream: str, start: int, end: int, entries: Sequence[LedgerEntry]) -> None:
        """Handle the applied range ``(start, end]`` of ``stream`` (``entries``: the events of
        it the store counted, in order), then record ``end`` as done."""
        ...


class FollowerProgress(Protocol):
    """Where each follower stands per stream, shared by every worker."""

    def done(self, follower: str, stream: str) -> int:
        """0 for a stream the follower never recorded."""
        ...

    def advance(self, follower: str, stream: str, end: int) -> None:
        """Record ``end`` as handled; never moves back (two workers handing the same range
        over a rebalance may record it in either order)."""
        ...
