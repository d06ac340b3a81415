"""The shared dedupe store of scale mode: exact per-event outcomes at ack time across API nodes.

A key ``(namespace, source, id)`` is *claimed* before its event is written to the durable log
(a Kafka topic) and *confirmed* once the write is durable. A claim is a lease: it names the
claimant by a token and lapses after a while, so a claimant that died between claim and write
never turns a retry into a silent drop (a retry finds a live claim BUSY, a lapsed one CLAIMED
again), and a second claimant never gets a live claim (a concurrent duplicate is BUSY or
DUPLICATE, never CLAIMED twice). The protocol, step by step, is in docs/scale.md:

1. ``claim(keys)`` -> per key: CLAIMED (under the call's token: write the event, carrying the
   token), DUPLICATE / CONFLICT (confirmed earlier with the same / another payload digest: answer
   so, write nothing) or BUSY (another claimant holds a live lease: answer a retryable error);
2. write the CLAIMED events to the log with their token and wait for every delivery report;
3. ``confirm(token, keys)`` -> per key, True when the claim is (now, or already) confirmed under
   this token; False when the lease lapsed and another claimant took the key over: that event's
   answer is a retryable error, and its copy in the log is skipped by the sink;
4. on a failed write: ``release(token, keys)`` drops the claims still held under the token, so
   a retry can claim at once.

The sink counts an event read from the log only when ``confirm(its token, [its key])`` is True:
a copy written by a claimant that lost its lease is skipped; a copy whose claimant died after the
write is confirmed by the sink itself (reading it proves it durable). Either way each key is
counted once.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Verdict(enum.StrEnum):
    CLAIMED = "claimed"
    """The caller holds the key under the call's token: write the event, then confirm."""
    DUPLICATE = "duplicate"
    """Confirmed earlier with the same payload digest."""
    CONFLICT = "conflict"
    """Confirmed earlier with another payload digest (the first payload wins)."""
    BUSY = "busy"
    """Another claimant holds a live lease on the key: retry later."""


@dataclass(frozen=True, slots=True)
class EventKey:
    namespace: str
    source: str
    id: str
    digest: bytes
    """The payload fingerprint (``Event.digest``) that tells a duplicate from a conflict."""


@dataclass(frozen=True, slots=True)
class Claims:
    """The answer to one ``claim`` call: one verdict per key, in call order, and the token the
    CLAIMED keys are held under (unique per call)."""

    token: str
    verdicts: list[Verdict]

    def claimed(self, keys: Sequence[EventKey]) -> list[EventKey]:
        """The keys of ``keys`` (the call's) that this call claimed."""
        return [k for k, v in zip(keys, self.verdicts, strict=True) if v is Verdict.CLAIMED]


class DedupeStore(Protocol):
    def claim(self, keys: Sequence[EventKey]) -> Claims:
        """Claim every key not confirmed within the dedupe window and not held by a live lease.
        A key repeated within one call is claimed at its first occurrence and DUPLICATE or
        CONFLICT (by digest) at the later ones. ``StorageUnavailable`` when the store fails."""
        ...

    def confirm(self, token: str, keys: Sequence[EventKey]) -> list[bool]:
        """Mark the keys held under ``token`` confirmed (idempotent); per key, whether it is
        confirmed under ``token`` now."""
        ...

    def release(self, token: str, keys: Sequence[EventKey]) -> None:
        """Drop the claims still pending under ``token`` (confirmed keys stay)."""
        ...

    def prune(self) -> int:
        """Forget confirmed keys older than the dedupe window and claims whose lease lapsed
        longer ago than the window; how many were dropped."""
        ...

    def confirmed_at(self, namespace: str, source: str, event_id: str) -> int | None:
        """When the key's claim was confirmed (µs, the confirming caller's clock); None when
        the key is not confirmed within the dedupe window: never claimed, only claimed (a
        pending or lapsed lease), forgotten by ``prune``, or erased (an erased key answers
        under its erased form only)."""
        ...
