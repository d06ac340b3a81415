"""Erasure of a subject (GDPR right to erasure): validates the request and hands it to the
store (``ports.erasure``), which rewrites and deletes in one transaction (``docs/erasure.md``)."""

from __future__ import annotations

from meterline.domain.erasure import ErasureRecord, ErasureRequest, validate
from meterline.ports.erasure import Erasures


class ErasureService:
    def __init__(self, store: Erasures) -> None:
        self._store = store

    def erase(self, namespace: str, subject: str, *, reason: str, actor: str) -> ErasureRecord:
        return self._store.erase(validate(ErasureRequest(namespace, subject, reason, actor)))

    def erasures(self, namespace: str) -> list[ErasureRecord]:
        return self._store.erasures(namespace)
