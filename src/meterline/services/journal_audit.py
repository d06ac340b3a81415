"""Scale mode's ``verify``, step 2: the journal of corrections against the log's chained
entries (``domain.integrity.journal``), as embedded mode checks its ``corrections`` table.

Run after the partitions' chains verified, reading nothing past each partition's applied
position (``applied``): a journal row whose entry a worker has not applied yet is not checked
(the entry is acknowledged before its row is stored, and applied later).
"""

from __future__ import annotations

from dataclasses import dataclass

from meterline.domain.integrity.chain import Break
from meterline.domain.integrity.journal import CorrectionRow, JournalRecord, covered, first_unrecorded, record_problem
from meterline.ports.correction_log import CorrectionJournal, Journaled
from meterline.ports.integrity import PartitionChainSource

PAGE = 5_000


@dataclass(frozen=True, slots=True)
class JournalReport:
    records: int
    """Journal rows checked (their entries applied)."""
    uncovered: int
    """Amends whose reason and actor the chain does not cover (written before link format 2)."""
    problem: Break | None


def audit_journal(source: PartitionChainSource, journal: CorrectionJournal, applied: dict[str, int]) -> JournalReport:
    """The first journal row or correction entry that disagree, by partition and offset."""
    entries = {stream: source.corrections(stream, done) for stream, done in sorted(applied.items())}
    rows = {(r.stream, r.seq): r for found in entries.values() for r in found}
    records = [r for r in _every(journal) if r.seq <= applied.get(r.stream, 0)]
    originals: dict[str, list[int]] = {}
    for r in records:
        originals.setdefault(r.stream, []).append(r.original)
    keys = {stream: source.keys(stream, seqs) for stream, seqs in originals.items()}
    problems = []
    for r in records:
        found = record_problem(
            r, rows.get((r.stream, r.seq)), keys[r.stream].get(r.original), source.pruned_before_us()
        )
        if found is not None:
            problems.append(found)
            break
    recorded = {(r.stream, r.seq): r for r in records}
    for found_rows in entries.values():
        unrecorded = first_unrecorded(found_rows, recorded)
        if unrecorded is not None:
            problems.append(unrecorded)
            break
    uncovered = sum(1 for r in rows.values() if not covered(r) and not r.erased)
    return JournalReport(len(records), uncovered, problems[0] if problems else None)


def _every(journal: CorrectionJournal) -> list[JournalRecord]:
    out: list[JournalRecord] = []
    after = 0
    while True:
        page = journal.every(after, PAGE)
        out.extend(_record(j) for j in page)
        if len(page) < PAGE:
            return out
        after = page[-1].number


def _record(j: Journaled) -> JournalRecord:
    return JournalRecord(
        j.stream, j.seq, j.original, j.target, j.namespace, j.source, j.event_id, j.action.value, j.reason, j.actor,
        j.received_us,
    )  # fmt: skip


__all__ = ["CorrectionRow", "JournalReport", "audit_journal"]
