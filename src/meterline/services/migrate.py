"""Moving a ledger into another deployment (``meterline migrate``): every entry of the source,
in sequence order, appended to the target's ledger as ingest would append it.

Guarantees, step by step:

1. The source is read up to the position it had when the migration began, a chunk at a time;
   what it accepts later is left for the next run.
2. Each entry becomes the same event again: its raw CloudEvent, decoded by the same rules, with
   the event time the source recorded (an event sent without ``time`` keeps the time the source
   gave it, and its payload fingerprint stays the one the source computed). The late-arrival
   window is not applied: these events were accepted once already.
3. The target's ``Ledger.append`` decides each one exactly as for a producer: its key
   (namespace, source, id) makes a second run, or an event the target already has, a
   *duplicate*, never a second count; a different payload under a known key is a *conflict*;
   the target's meters and unknown-subject policy may reject or quarantine. Every outcome is
   counted in the report, and each rejection names the source entry.
4. A correction entry (a void or an amend, ``domain.events.corrections``) is not an event:
   it is reported as refused (``correction``), so the migration is not complete, and the
   event must be corrected again in the target.
5. A failure part-way loses nothing: every chunk appended before it is durable in the target,
   and running the migration again resumes by reporting those as duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby

import msgspec

from meterline.domain.events.decode import Limits, decode_one
from meterline.domain.events.model import Candidate, Status
from meterline.ports.ledger import Ledger, LedgerEntry, LedgerReader

_REPLAYED = Limits(max_events=1_000_000, future_skew_us=10**18, late_window_us=None)
"""Checked once at the source: its time checks are not repeated."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A source entry the target did not accept or hold (rejected there)."""

    seq: int
    namespace: str
    event_id: str | None
    reason: str
    message: str


@dataclass(slots=True)
class MigrationReport:
    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    quarantined: int = 0
    refused: list[Refused] = field(default_factory=list)
    source_position: int = 0

    @property
    def complete(self) -> bool:
        """Every entry read is in the target with the source's payload (accepted now, or a
        duplicate of what it already held)."""
        return not self.refused and not self.conflicts and not self.quarantined


def migrate(
    source: LedgerReader,
    target: Ledger,
    *,
    namespace: str | None = None,
    chunk: int = 1000,
    progress: Callable[[int], None] = lambda n: None,
    timeout: float = 300.0,
) -> MigrationReport:
    """Append the source's entries (of ``namespace`` only, when given) to ``target``;
    ``progress`` is told how many source entries each chunk covered."""
    report = MigrationReport(source_position=source.position())
    after = 0
    while after < report.source_position:
        entries = [e for e in source.read(after, chunk) if e.seq <= report.source_position]
        if not entries:
            break
        for ns, run in groupby(entries, key=lambda e: e.namespace):
            if namespace is None or ns == namespace:
                _append(target, ns, list(run), report, timeout)
        after = entries[-1].seq
        progress(len(entries))
    return report


def _append(
    target: Ledger, namespace: str, entries: Sequence[LedgerEntry], report: MigrationReport, timeout: float
) -> None:
    corrections = [e for e in entries if e.correction]
    if corrections:  # a void or amend is not an event a target ledger can take as ingest
        report.read += len(corrections)
        for e in corrections:
            note = "a correction is not migrated; correct the event again in the target"
            report.refused.append(Refused(e.seq, namespace, None, "correction", note))
        entries = [e for e in entries if not e.correction]
        if not entries:
            return
    candidates = [_candidate(i, e) for i, e in enumerate(entries)]
    outcomes = target.append(namespace, candidates).result(timeout)
    report.read += len(entries)
    for outcome, entry in zip(outcomes, entries, strict=True):
        if outcome.status is Status.ACCEPTED:
            report.accepted += 1
        elif outcome.status is Status.DUPLICATE:
            report.duplicates += 1
            report.conflicts += outcome.conflict
        elif outcome.status is Status.QUARANTINED:
            report.quarantined += 1
        else:
            reason = "rejected" if outcome.reason is None else outcome.reason.value
            report.refused.append(Refused(entry.seq, namespace, outcome.id, reason, outcome.message or ""))


def _candidate(index: int, entry: LedgerEntry) -> Candidate:
    """The entry as the event it was: decoded at the time it was received (so an event sent
    without ``time`` gets the time the source gave it), with the source's event time."""
    candidate = decode_one(index, msgspec.Raw(entry.raw), entry.namespace, entry.received_us, _REPLAYED)
    if candidate.event is not None and candidate.event.time_us != entry.time_us:
        candidate.event = msgspec.structs.replace(candidate.event, time_us=entry.time_us)
    return candidate
