"""The journal of corrections against a partitioned log's chained entries (scale mode's
``verify``, step 2): pure checks, no storage.

A void or amend of a partitioned log is an entry of its original's partition (the raw row,
chained like any: ``domain.integrity.batches``) plus a row of the journal of corrections saying
which original it corrects, why and by whom. The journal lives beside the chain, so it is
checked against what the chain covers, with the messages embedded mode uses
(``adapters.sqlite.audit``):

- a record whose entry is missing (not pruned by retention), is no correction, or supersedes
  another version than the entry does;
- a record naming an original of another event, or whose event is not the entry's;
- a record whose action, original, reason or actor differ from what the entry carries: its
  chained record (link format 2: ``chain.correction_record``), or a void's body (which holds
  the reason and actor in every format). An amend written before format 2 carries no record:
  its reason and actor are in the journal only (counted as not covered);
- a correction entry without its record. One exception, documented in ``docs/scale.md``: an API
  node that died after the log acknowledged a correction and before its journal row leaves an
  entry without a record, and the caller's retry writes a later correction of the same version;
  of two corrections of one version only the later counts, so an unrecorded entry followed by
  a later correction of the same version is that crash's leftover, not a finding.

Erased entries (their key and reason rewritten by the erasure) are checked for their place
only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import msgspec

from meterline.domain.integrity.batches import where
from meterline.domain.integrity.chain import Break, parse_correction_record


class CorrectionRow(NamedTuple):
    """A correction entry as the raw table stores it (``corrects`` > 0)."""

    stream: str
    seq: int
    namespace: str
    source: str
    id: str
    corrects: int
    record: bytes
    """Its chained audit record (empty: written before link format 2)."""
    raw: bytes
    erased: bool = False


class JournalRecord(NamedTuple):
    """One row of the journal of corrections."""

    stream: str
    seq: int
    original: int
    target: int
    namespace: str
    source: str
    event_id: str
    action: str
    reason: str
    actor: str
    received_us: int


class _VoidBody(msgspec.Struct):
    reason: str | None = None
    actor: str | None = None


class _Body(msgspec.Struct):
    void: _VoidBody | None = None
    specversion: str | None = None


_body = msgspec.json.Decoder(_Body)


def record_problem(
    record: JournalRecord,
    row: CorrectionRow | None,
    original: tuple[str, str, str] | None,
    pruned_before_us: int | None,
) -> Break | None:
    """``record`` against its entry ``row`` and the key of the entry it names as its original
    (None: not in the raw events)."""
    at = where(record.stream, record.seq)
    if row is None:
        if pruned_before_us is not None and record.received_us < pruned_before_us:
            return None  # its raw row went with retention; the chain keeps its digest
        return _break(
            record, f"the correction record of {at} has no ledger entry: the record was added or its entry removed"
        )
    label = _label(row)
    problem = _place(record, row, original)
    if problem is None and not row.erased:
        problem = _content(record, row)
    return None if problem is None else _break(record, f"the correction record of {at} ({label}) {problem}")


def _place(record: JournalRecord, row: CorrectionRow, original: tuple[str, str, str] | None) -> str | None:
    if row.corrects == 0 or row.namespace != record.namespace:
        return "does not match the entry: the entry is no correction of that namespace"
    if row.corrects != record.target:
        return (
            f"does not match the entry: it supersedes offset {record.target - 1}, the entry offset {row.corrects - 1}"
        )
    is_void = _is_void(row.raw)
    if is_void != (record.action == "void"):
        return f"says {record.action}, but the entry is {'a void' if is_void else 'an amend'}"
    if row.erased:
        return None  # an erasure gives the entry and its record a new key
    key = (row.namespace, row.source, row.id)
    if original is None or original != key or (record.namespace, record.source, record.event_id) != key:
        return f"names offset {record.original - 1} as its original, an entry of another event"
    return None


def _content(record: JournalRecord, row: CorrectionRow) -> str | None:
    if row.record:
        fields = parse_correction_record(row.record)
        if fields is None or fields != (record.action, record.original, record.reason, record.actor):
            return f"differs from the {record.action} entry's original, reason or actor"
        return None
    body = _decoded(row.raw)
    if body is not None and body.void is not None and body.specversion is None:
        if (body.void.reason, body.void.actor) != (record.reason, record.actor):
            return "differs from the void entry's original, reason or actor"
    return None


def covered(row: CorrectionRow) -> bool:
    """Whether the chain covers the entry's reason and actor (a void's body always does)."""
    return bool(row.record) or _is_void(row.raw)


def first_unrecorded(rows: Sequence[CorrectionRow], recorded: Mapping[tuple[str, int], object]) -> Break | None:
    """The first correction entry of ``rows`` (one partition's, by seq) without its journal
    row, unless a later entry corrects the same version (a crash's leftover, module doc)."""
    last = {row.corrects: row.seq for row in rows}
    for row in rows:
        if (row.stream, row.seq) in recorded or last[row.corrects] != row.seq:
            continue
        kind = "a void" if _is_void(row.raw) else "an amend"
        return Break(
            row.seq,
            "audit",
            f"{where(row.stream, row.seq)} ({_label(row)}) is {kind} without its correction record: the record"
            " was removed",
        )
    return None


def _label(row: CorrectionRow) -> str:
    if row.erased:
        return f"erased event in namespace {row.namespace!r}"
    return f"event {row.id!r} from source {row.source!r} in namespace {row.namespace!r}"


def _break(record: JournalRecord, message: str) -> Break:
    return Break(record.seq, "audit", message)


def _is_void(raw: bytes) -> bool:
    body = _decoded(raw)
    return body is not None and body.void is not None and body.specversion is None


def _decoded(raw: bytes) -> _Body | None:
    try:
        return _body.decode(raw)
    except msgspec.DecodeError:
        return None
