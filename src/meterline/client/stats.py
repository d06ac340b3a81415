"""The client's accounting: every recorded event ends as sent or dropped (with a reason), or is
still pending (in memory or spooled on disk)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

DROP_REASONS = (
    "queue_full",  # no spool, and the memory queue was full: the newest event is dropped
    "spool_full",  # the spool reached spool_max_bytes
    "too_large",  # one event larger than a spool record may be (16 MiB)
    "closed",  # recorded after close()
    "closed_unsent",  # no spool: still queued when close() gave up waiting
    "attempts_exhausted",  # max_attempts tries failed
    "refused",  # the server refused the whole batch (a 4xx other than 408/425/429)
    "rejected",  # the server rejected the event itself (it is in the server's dead letters)
)


@dataclass(frozen=True)
class ClientStats:
    recorded: int
    """Events ``record`` kept (in the spool or the memory queue)."""
    sent: int
    """Events meterline acknowledged: ``accepted`` + ``duplicates``."""
    accepted: int
    duplicates: int
    """Events meterline already had (a resend after a crash or a lost answer): counted once there."""
    dropped: int
    """Events given up on, all reasons together."""
    dropped_by_reason: MappingProxyType[str, int]
    """``dropped`` by reason (``DROP_REASONS``); ``rejected`` also by the server's reason in ``rejected_by_reason``."""
    rejected_by_reason: MappingProxyType[str, int]
    pending: int
    """Events waiting for delivery now: in the spool (also those left by an earlier process) or in memory."""
    spooled: bool
    """Whether waiting events are on disk (a spool is configured)."""
    retries: int
    """POSTs repeated after a retryable failure."""
    failed_batches: int
    """Batches given up on (refused or out of attempts)."""
    torn_records: int
    """Torn records found in the spool (from a crash mid-write); reported, never sent."""

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.__dict__.items() if not isinstance(v, MappingProxyType)},
            "dropped_by_reason": dict(self.dropped_by_reason),
            "rejected_by_reason": dict(self.rejected_by_reason),
        }


@dataclass
class Counters:
    recorded: int = 0
    accepted: int = 0
    duplicates: int = 0
    retries: int = 0
    failed_batches: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    rejected: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def drop(self, reason: str, n: int = 1) -> None:
        with self.lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def snapshot(self, pending: int, spooled: bool, torn: int) -> ClientStats:
        with self.lock:
            return ClientStats(
                recorded=self.recorded,
                sent=self.accepted + self.duplicates,
                accepted=self.accepted,
                duplicates=self.duplicates,
                dropped=sum(self.dropped.values()),
                dropped_by_reason=MappingProxyType(dict(self.dropped)),
                rejected_by_reason=MappingProxyType(dict(self.rejected)),
                pending=pending,
                spooled=spooled,
                retries=self.retries,
                failed_batches=self.failed_batches,
                torn_records=torn,
            )
