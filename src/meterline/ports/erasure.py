"""Erasure of a subject (``domain.erasure``): its identifiers and payloads leave the store,
its usage stays under a pseudonym; every erasure leaves an audit record."""

from __future__ import annotations

from typing import Protocol

from meterline.domain.erasure import ErasureRecord, ErasureRequest

__all__ = ["ErasureRecord", "ErasureRequest", "Erasures"]


class Erasures(Protocol):
    def erase(self, request: ErasureRequest) -> ErasureRecord:
        """Erase ``request.subject`` in its namespace (``subject_not_found`` when nothing refers
        to it) and return the audit record written in the same transaction."""
        ...

    def erasures(self, namespace: str) -> list[ErasureRecord]:
        """The audit records of ``namespace``, newest first."""
        ...
