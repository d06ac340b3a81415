"""Erasure of a subject (``domain.erasure``): its identifiers and payloads leave the store,
its usage stays under a pseudonym; every erasure leaves an audit record."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from meterline.domain.erasure import ErasureRecord, ErasureRequest

__all__ = [
    "CatalogFiles",
    "ErasableKeys",
    "ErasableStore",
    "ErasedEntries",
    "ErasedEntry",
    "ErasedKey",
    "ErasureCatalog",
    "ErasureRecord",
    "ErasureRequest",
    "Erasures",
    "RewritableFiles",
    "Step",
    "StoredVersion",
    "TableRewriter",
    "UnfinishedErasure",
]


class Erasures(Protocol):
    def erase(self, request: ErasureRequest) -> ErasureRecord:
        """Erase ``request.subject`` in its namespace (``subject_not_found`` when nothing refers
        to it) and return the audit record written in the same transaction."""
        ...

    def erasures(self, namespace: str) -> list[ErasureRecord]:
        """The audit records of ``namespace``, newest first."""
        ...


# -- scale mode: the erasure over a partitioned log, ClickHouse and PostgreSQL ----------------


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of an event key (the event, or a correction entry) as the usage store
    holds it: its place in the log and its original fields."""

    stream: str
    seq: int
    namespace: str
    source: str
    id: str
    type: str
    subject: str
    time_us: int
    received_us: int
    raw: bytes
    corrects: int


@dataclass(frozen=True, slots=True)
class ErasedEntry:
    """The erased form of the log entry at (``stream``, ``seq``): what the usage store holds
    instead of it, and what a sink worker that reads the original record again writes
    (``ErasedEntries``). Source ``""``, ``id`` the erased id, ``subject`` the pseudonym (or the
    version's own other subject), ``raw`` reduced to what the meters read; ``kept`` a digest of
    the original version (what a hash chain over the log verifies it by)."""

    stream: str
    seq: int
    namespace: str
    type: str
    subject: str
    time_us: int
    received_us: int
    id: str
    raw: bytes
    corrects: int
    kept: bytes


@dataclass(frozen=True, slots=True)
class ErasedKey:
    """An idempotency key the erasure replaces by its erased key (dedupe store, journal)."""

    source: str
    id: str
    erased_id: str


class ErasableStore(Protocol):
    """The usage store's side of a scale-mode erasure (ClickHouse)."""

    def versions(self, namespace: str, subject: str) -> list[StoredVersion]:
        """The subject's stored entries and every other version of their keys, in log order."""
        ...

    def has_usage(self, meters: Sequence[int], subject: str) -> bool:
        """Whether any usage row of ``meters`` is keyed by ``subject``."""
        ...

    def copy(self, erasure: ErasureRecord, entries: Sequence[ErasedEntry], meters: Sequence[int], subject: str) -> int:
        """Step 1: mark the entries erased for the hash chain (the digest of each erased form),
        then insert the erased entries and the subject's usage states moved to the erasure's
        pseudonym (under tokens of the erasure: a repeat after a crash inserts nothing twice);
        rows copied."""
        ...

    def drop(
        self, namespace: str, entries: Sequence[ErasedEntry], meters: Sequence[int], subject: str, alias: str
    ) -> None:
        """Step 2: delete the original entries and the subject's usage rows of ``namespace``
        (synchronously, so the parts that held them are outdated when it returns)."""
        ...


class Step(enum.IntEnum):
    """The steps of a scale-mode erasure after the catalog's transaction, in order; the catalog
    records the last one done, so a resumed run does the rest (``services.log_erasure``)."""

    BEGUN = 1
    """The catalog's transaction (audit record, erased entries, its dedupe keys, journal, ...)."""
    KEYS = 2
    """The keys of a dedupe store outside the catalog marked erased (``ErasableKeys``)."""
    COPIED = 3
    """The erased entries and the usage moved to the pseudonym inserted in the usage store."""
    SWITCHED = 4
    """The customers map the pseudonym instead of the subject."""
    DROPPED = 5
    """The original entries and the subject's usage rows deleted from the usage store."""
    COUNTED = 6
    """The live usage counters moved to the pseudonym."""
    REWRITTEN = 7
    """After the finish (the record no longer holds the subject): the catalog's tables the
    erasure changed rewritten, so their files hold no old version of a deleted or changed row
    (``CatalogFiles``)."""


@dataclass(frozen=True, slots=True)
class UnfinishedErasure:
    """An erasure a process began and did not finish (it died, or a step failed): the record,
    the subject it erases (kept by the catalog until the erasure finishes) and the last step done."""

    record: ErasureRecord
    subject: str
    step: Step


@runtime_checkable
class ErasableKeys(Protocol):
    """A dedupe store outside the catalog (Redis): its side of a scale-mode erasure."""

    def erase_keys(self, namespace: str, keys: Sequence[ErasedKey]) -> int:
        """Each key's entry marked erased (it holds keyed hashes only, as the catalog's dedupe
        rows do), so a resent erased event is still a duplicate and the key is no accepted
        event's any more; how many entries were marked (a repeat marks none)."""
        ...

    def forget_keys(self, namespace: str, keys: Sequence[tuple[str, str]]) -> int:
        """Drop the entries of these ``(source, id)`` keys (quarantined events the erasure
        deletes: never counted, so a resend is held again); how many were there."""
        ...


@runtime_checkable
class RewritableFiles(Protocol):
    """A store outside the catalog whose own files may keep what the erasure deleted or
    replaced in it (Redis's AOF and RDB snapshot)."""

    def rewrite_files(self, max_wait: float) -> dict[str, str]:
        """Have the store rewrite its files from its data now, waiting at most ``max_wait``
        seconds; what was done, per file kind (never raises: a failure is an outcome)."""
        ...


class TableRewriter(Protocol):
    def rewrite(self, table: str, lock_timeout: float) -> str:
        """Rewrite ``table``'s files from its live rows, waiting at most ``lock_timeout``
        seconds for its lock: ``rewritten``, ``busy`` (the lock was not granted), ``held``
        (old row versions an open transaction may still see were kept) or ``failed: <why>``."""
        ...


class CatalogFiles(Protocol):
    """The catalog's own files (PostgreSQL): deleting or updating a row leaves its old version
    in them until the table is rewritten."""

    @property
    def tables(self) -> tuple[str, ...]:
        """What is rewritten after an erasure, in order."""
        ...

    def rewriting(self) -> AbstractContextManager[TableRewriter | None]:
        """The rewriter for the block (None: another process is rewriting: it does it)."""
        ...


class ErasureCatalog(Protocol):
    """The catalog's side of a scale-mode erasure (PostgreSQL): the shared secret, the audit
    records, and every catalog row that names the subject."""

    def secret(self) -> bytes:
        """The erasure secret shared by every node (created once)."""
        ...

    def meter_keys(self, namespace: str) -> list[int]:
        """Every meter key the namespace ever had (deleted meters too)."""
        ...

    def refers(self, namespace: str, subject: str) -> bool:
        """A customer mapping, quarantined event, dead letter or portal token names the subject."""
        ...

    def held_keys(self, namespace: str, subject: str) -> list[tuple[str, str]]:
        """The ``(source, id)`` keys of the subject's quarantined events (held, released or
        dead-lettered), which ``begin`` deletes."""
        ...

    def begin(
        self,
        request: ErasureRequest,
        alias: str,
        through: Mapping[int, int],
        entries: Sequence[ErasedEntry],
        keys: Sequence[ErasedKey],
        log_kept_ms: int | None = None,
    ) -> ErasureRecord:
        """``log_kept_ms``: how long the log may keep the subject's records (the record's
        ``log_kept_ms``). One transaction: the audit record (an unfinished one of the same pseudonym is taken
        up again: its id, so the usage store's tokens, stay), the erased entries, the dedupe
        store's keys and the correction journal's rows rewritten, quarantined events, dead
        letters and portal tokens of the subject deleted. The record's counts say what it did.
        From its commit until ``finish`` the erasure is unfinished (``unfinished``): it keeps
        the subject and holds the sink workers off, whatever happens to this process."""
        ...

    def reached(self, record: ErasureRecord, step: Step, counts: Mapping[str, int]) -> ErasureRecord:
        """One transaction: ``step`` done (the recorded step only grows), ``counts`` added."""
        ...

    def unfinished(self) -> list[UnfinishedErasure]:
        """Every erasure begun and not finished, oldest first (every namespace)."""
        ...

    def entries(self, record: ErasureRecord) -> list[ErasedEntry]:
        """The erased entries ``begin`` stored for the erasure, in log order."""
        ...

    def switch(self, record: ErasureRecord, subject: str) -> dict[str, int]:
        """One transaction: customers map the pseudonym instead of the subject (a customer whose
        key is the subject gets the pseudonym as key); how many mappings and keys moved."""
        ...

    def finish(
        self, record: ErasureRecord, counts: Mapping[str, int], files: Mapping[str, str] | None = None
    ) -> ErasureRecord:
        """Add ``counts`` (and what was done to ``files`` outside the catalog, ``RewritableFiles``)
        to the record and mark it finished (the subject is forgotten, the workers are no longer
        held by it)."""
        ...

    def erasures(self, namespace: str) -> list[ErasureRecord]: ...

    def unrewritten(self) -> list[ErasureRecord]:
        """Finished erasures whose catalog tables are not rewritten yet (``Step.REWRITTEN``),
        oldest first (every namespace)."""
        ...

    def rewritten(self, record: ErasureRecord, files: Mapping[str, str], done: bool) -> ErasureRecord:
        """Record what rewriting the tables gave (per table); ``done``: every one rewritten
        (the step is reached; otherwise the erasure stays in ``unrewritten``)."""
        ...


class ErasedEntries(Protocol):
    """What the sink workers consult so that an erased entry read again from the log (its
    records are immutable) is written in its erased form, never as it was."""

    def through(self) -> dict[str, int]:
        """Per stream, the last seq erased so far (streams with none are absent)."""
        ...

    def within(self, stream: str, after: int, end: int) -> dict[int, ErasedEntry]:
        """The erased entries of ``stream`` with ``after < seq <= end``, by seq."""
        ...
