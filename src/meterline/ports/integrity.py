"""What ``verify`` reads from a ledger store: its entries with their chain hashes, one snapshot.

A store answers every call of one ``ChainSource`` from the same snapshot (embedded: one SQLite
read transaction). ``rows`` recomputes each entry's content digest from what is stored *now*
(``domain.integrity.chain.content_digest``) and returns it with the hash stored beside it;
entries removed by retention come back as their kept digest (``content`` None), erased ones
with the digest kept from before the erasure. A scale store implements the same reads over its
own ledger (see ``docs/integrity.md``).

A partitioned log (scale mode) has one chain per partition, a link per applied batch
(``domain.integrity.batches``): ``PartitionChainSource`` reads those links and the raw rows.
"""

from __future__ import annotations

from typing import Protocol

from meterline.domain.integrity.batches import Link, StoredEntry
from meterline.domain.integrity.chain import Break, ChainRow, Head
from meterline.domain.integrity.erasures import ErasureChain
from meterline.domain.integrity.journal import CorrectionRow

__all__ = [
    "Break",
    "ChainRow",
    "ChainSource",
    "CorrectionRow",
    "ErasureChain",
    "Head",
    "Link",
    "PartitionChainSource",
    "StoredEntry",
]


class ChainSource(Protocol):
    def ledger_id(self) -> str:
        """The random id the store was given when it was created (named in exported heads)."""
        ...

    def recorded_head(self) -> Head | None:
        """The head the store recorded with its last append (None: nothing appended yet)."""
        ...

    def anchor(self) -> tuple[int, int] | None:
        """(seq, time_us): entries up to ``seq`` were in the store before it had the chain and
        were linked when it gained it, at ``time_us``; None before that migration ran."""
        ...

    def rows(self, after: int, limit: int) -> list[ChainRow]:
        """Up to ``limit`` positions after ``after``, in sequence order."""
        ...

    def erasure_chain(self) -> ErasureChain:
        """The erasure chain (``domain.integrity.erasures``): its links with the (seq, erased
        content digest) of their entries as stored now, its recorded head and anchor."""
        ...

    def audit_trail(self) -> Break | None:
        """The first correction record (the void/amend audit trail kept beside the ledger)
        that disagrees with the ledger entries it describes: a record without its entry, one
        whose original is not an earlier version of the same key, a void entry without its
        record, or a void whose recorded original, reason or actor differ from its entry's;
        from the switch to content format 2 on, also an amend's (its entry carries its record)."""
        ...

    def uncovered_amends(self) -> tuple[int, int]:
        """(the first entry whose correction record the chain covers, how many amends come
        before it): those amends' reason and actor are kept in their record only."""
        ...

    def close(self) -> None: ...


class PartitionChainSource(Protocol):
    """The chains of a partitioned log: per partition (a stream), its links and raw rows. A
    store without one snapshot answers consistently as long as the caller reads nothing past
    the positions :meth:`applied` gave (what is applied there no longer changes)."""

    def ledger_id(self) -> str: ...

    def applied(self) -> dict[str, int]:
        """Every partition and the seq up to which its batches are applied (and linked)."""
        ...

    def links(self, stream: str, after: int, limit: int) -> list[Link]:
        """About ``limit`` links of ``stream`` starting at or after ``after``, by start (links
        from one start are never split between two calls)."""
        ...

    def entries(self, stream: str, after: int, end: int, limit: int) -> list[StoredEntry]:
        """The raw rows of ``stream`` with ``after < seq <= end``, by seq, about ``limit`` (a
        seq stored twice is never split between two calls)."""
        ...

    def erased_gone(self, stream: str, after: int, end: int) -> frozenset[int]:
        """Seqs in ``(after, end]`` whose rows an erasure deleted."""
        ...

    def pruned_before_us(self) -> int | None:
        """Rows received before this may have been removed by retention (None: no retention)."""
        ...

    def chain_since_us(self) -> int | None:
        """When the chain began (the first worker with it started); None: never."""
        ...

    def unchained(self, stream: str, upto: int, since_us: int) -> int | None:
        """The first seq ``<= upto`` of ``stream`` whose row was received at or after ``since_us``."""
        ...

    def corrections(self, stream: str, upto: int) -> list[CorrectionRow]:
        """The correction entries (voids, amends) of ``stream`` with ``seq <= upto``, by seq."""
        ...

    def keys(self, stream: str, seqs: list[int]) -> dict[int, tuple[str, str, str]]:
        """(namespace, source, id) of the entries of ``stream`` at ``seqs`` that are stored."""
        ...

    def close(self) -> None: ...
