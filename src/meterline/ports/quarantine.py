"""The quarantine of scale mode: events of subjects no customer claims yet, held in the shared
catalog until a customer claims the subject, then written to the log exactly once.

Embedded mode moves a released event into its ledger in the customer's own transaction. A
partitioned log shares no transaction with the catalog, so scale mode splits the move in three
steps, each safe to repeat (docs/scale.md, "The quarantine"):

1. **hold** (API node, at ack time): the event's dedupe key is claimed as for any event; the
   event is stored here under the claim's token, *then* the claim is confirmed and the event
   answered ``quarantined`` (a retry is a duplicate);
2. **release** (the customer's save, in its transaction): the subject's held events are marked
   released; a releaser takes them under a lease, writes each to the log carrying its token and
   a released flag, and marks it delivered. A releaser that dies after writing and before
   marking leaves the lease to lapse, and the next one writes the event again;
3. **settle** (sink worker): a released copy counts only if it is the first copy of that event
   the workers met, by log position (``settle``): so a second copy written by step 2's retry is
   skipped, and a batch redone after a worker crash meets the same copy at the same position
   and counts it again, as it must.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from meterline.domain.customers.model import UnknownSubjects
from meterline.domain.events.model import Event, Outcome


@dataclass(frozen=True, slots=True)
class Screened:
    """A namespace's unknown-subject policy (None: never set, the configured default applies)
    and which of the asked subjects are a customer's usage (a subject key it claims, or its
    own key: ``Customer.usage_subjects``)."""

    policy: UnknownSubjects | None
    owned: frozenset[str]


@dataclass(frozen=True, slots=True)
class Release:
    """A released event taken by a releaser: write it to the log under ``token``."""

    id: int
    event: Event
    received_us: int
    token: str


@dataclass(frozen=True, slots=True)
class Copy:
    """A released event's copy as a sink worker read it: its key, the token it carries and
    where in the log it sits (``<stream>@<seq>``)."""

    namespace: str
    source: str
    id: str
    token: str
    position: str


class HeldEvents(Protocol):
    """Steps 1 and 2 (the API nodes' side)."""

    def screen(self, namespace: str, subjects: Sequence[str]) -> Screened:
        """The namespace's policy and the subjects of ``subjects`` that a customer claims (one
        round trip; ingest asks it per request)."""
        ...

    def hold(self, namespace: str, token: str, events: Sequence[Event], received_us: int) -> bool:
        """Keep ``events`` (their keys claimed under ``token``), all or none; False, keeping
        none, when a customer claimed one of their subjects since ``screen`` (write them to
        the log instead: retry). An event already held is held under ``token`` now."""
        ...

    def take(self, limit: int, lease_us: int) -> builtins.list[Release]:
        """Up to ``limit`` released, undelivered events nobody else holds a live lease on,
        oldest first, now leased to the caller for ``lease_us``."""
        ...

    def delivered(self, outcomes: Sequence[tuple[int, str]]) -> None:
        """Mark taken events done: ``(id, "accepted")`` written to the log, ``(id,
        "rejected:<reason>")`` dead-lettered instead (a meter can no longer read it)."""
        ...


class HeldKeys(Protocol):
    """Whether an idempotency key went to the quarantine (corrections ask it: such a key is
    confirmed in the dedupe store without being an accepted event)."""

    def went_to_quarantine(self, namespace: str, source: str, event_id: str) -> bool:
        """True while the quarantine records an event of the key: held, released (written to the
        log or dead-lettered) alike; an erasure deletes the records of its subject."""
        ...


class ReleasedCopies(Protocol):
    """Step 3 (the sink workers' side)."""

    def settle(self, copies: Sequence[Copy]) -> builtins.list[bool]:
        """Per copy, whether it is the one that counts: the first position recorded for its
        event, recorded now when none was (the same position answers True again)."""
        ...


class ReleaseLog(Protocol):
    """Where released events are written (the log: ``KafkaLedger.write_released``)."""

    def write_released(self, releases: Sequence[Release]) -> Future[builtins.list[Outcome]]:
        """One outcome per release, in order (accepted: in the log; rejected: dead-lettered,
        a meter can no longer read it); resolves once every write is durable."""
        ...
