"""What ``verify`` reads from a ledger store: its entries with their chain hashes, one snapshot.

A store answers every call of one ``ChainSource`` from the same snapshot (embedded: one SQLite
read transaction). ``rows`` recomputes each entry's content digest from what is stored *now*
(``domain.integrity.chain.content_digest``) and returns it with the hash stored beside it;
entries removed by retention come back as their kept digest (``content`` None), erased ones
with the digest kept from before the erasure. A scale store implements the same reads over its
own ledger (see ``docs/integrity.md``).
"""

from __future__ import annotations

from typing import Protocol

from meterline.domain.integrity.chain import ChainRow, Head

__all__ = ["ChainRow", "ChainSource", "Head"]


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

    def close(self) -> None: ...
