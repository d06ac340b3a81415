"""Re-submitting dead letters: each chosen rejected event goes through ingest again, exactly as
it was first sent (after, say, a meter was fixed so its value now reads).

1. the dead letters are read by id (only the caller's namespace);
2. their raw bodies are decoded and checked as ingest does, and appended to the ledger in one
   request: an event is accepted, a duplicate (already counted: never twice), quarantined, or
   rejected again, and then the ledger keeps a new dead letter with the reason of today;
3. after that append is durable, the old dead letters are removed.

A crash between 2 and 3 leaves the old dead letters in place; re-submitting them again is safe,
because the ledger recognises the events it accepted as duplicates. An event sent without a
``time`` gets the time of its re-submission, as it would on any ingest.
"""

from __future__ import annotations

import msgspec

from meterline.domain.clock import Clock
from meterline.domain.events.decode import Limits, decode_one
from meterline.domain.events.model import Outcome, Status
from meterline.ports.dead_letters import DeadLetterFilter
from meterline.ports.ledger import Ledger
from meterline.services.dead_letters import DeadLetterService


class Resubmission:
    def __init__(self, dead_letters: DeadLetterService, ledger: Ledger, clock: Clock, limits: Limits) -> None:
        self._dead_letters = dead_letters
        self._ledger = ledger
        self._clock = clock
        self._limits = limits

    def resubmit(self, namespace: str, ids: tuple[int, ...]) -> tuple[dict[str, int], list[Outcome]]:
        """Re-submit dead letters ``ids`` of ``namespace``: (how many ended in each status, the
        outcomes in order). Ids of other namespaces, or gone, are not found and not counted."""
        chosen = DeadLetterFilter(ids=ids)
        letters = self._dead_letters.list(namespace, chosen, limit=len(ids))
        if not letters:
            return {}, []
        now = self._clock.now_us()
        candidates = [decode_one(i, msgspec.Raw(d.raw), namespace, now, self._limits) for i, d in enumerate(letters)]
        outcomes = list(self._ledger.append(namespace, candidates).result())
        self._dead_letters.purge(namespace, DeadLetterFilter(ids=tuple(d.id for d in letters)))
        counts = {s.value: 0 for s in Status}
        for o in outcomes:
            counts[o.status.value] += 1
        return counts, outcomes
