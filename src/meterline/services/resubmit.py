"""Re-submitting dead letters: each chosen rejected event goes through ingest again, exactly as
it was first sent (after, say, a meter was fixed so its value now reads), exactly once.

1. the dead letters are chosen by id (only the caller's namespace);
2. in one transaction of the store (``ports.dead_letters.Resubmitter``), those not re-submitted
   before are decoded and checked as ingest does and appended to the ledger: each is accepted,
   a duplicate (already counted: never twice), quarantined, or rejected again (then the ledger
   keeps a new dead letter with today's reason); and each is marked re-submitted, with that
   outcome and who did it. The dead letter itself stays, marked;
3. a second re-submission of the same ids, or one running at the same time, finds them marked
   and re-submits nothing (reported as already re-submitted).

An event sent without a ``time`` gets the time of its re-submission, as it would on any ingest.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from meterline.domain.clock import Clock
from meterline.domain.errors import InvalidInput
from meterline.domain.events.decode import Limits, decode_one
from meterline.domain.events.model import Candidate, Outcome, Status
from meterline.ports.dead_letters import Resubmitter

MAX_IDS = 1000


@dataclass(frozen=True, slots=True)
class ResubmitReport:
    outcomes: list[tuple[int, Outcome]]
    """(dead letter id, ingest outcome) of each one re-submitted now, in id order."""
    already: tuple[int, ...]
    """Chosen ids re-submitted before: nothing was done for them."""
    not_found: tuple[int, ...]
    """Chosen ids that are no dead letter of the namespace."""
    position: int

    @property
    def counts(self) -> dict[str, int]:
        """How many ended in each status (and ``already re-submitted``)."""
        counts = {s.value: 0 for s in Status}
        for _, o in self.outcomes:
            counts[o.status.value] += 1
        if self.already:
            counts["already re-submitted"] = len(self.already)
        return counts


class Resubmission:
    def __init__(self, resubmitter: Resubmitter, clock: Clock, limits: Limits) -> None:
        self._resubmitter = resubmitter
        self._clock = clock
        self._limits = limits

    def resubmit(self, namespace: str, ids: tuple[int, ...], *, actor: str) -> ResubmitReport:
        """Re-submit dead letters ``ids`` of ``namespace`` (see the module doc)."""
        if not 1 <= len(ids) <= MAX_IDS:
            raise InvalidInput(f"choose 1 to {MAX_IDS} dead letters", code="invalid_dead_letter_ids")
        chosen = tuple(dict.fromkeys(ids))
        now = self._clock.now_us()

        def decode(index: int, raw: bytes) -> Candidate:
            return decode_one(index, msgspec.Raw(raw), namespace, now, self._limits)

        done = self._resubmitter.resubmit(namespace, chosen, decode, actor)
        seen = {id_ for id_, _ in done.outcomes} | set(done.already)
        missing = tuple(id_ for id_ in chosen if id_ not in seen)
        return ResubmitReport(done.outcomes, done.already, missing, done.position)
