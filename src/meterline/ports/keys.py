"""API keys: stored by the SHA-256 of the whole key; the secret itself is never stored."""

from __future__ import annotations

from typing import Protocol

from meterline.domain.auth.keys import ApiKey


class KeyStore(Protocol):
    def add(self, key: ApiKey, digest: bytes, *, only_if_none: bool = False) -> bool:
        """Store ``key`` under ``digest``; with ``only_if_none``, only when no key exists at all
        (checked and written in one transaction). True when stored."""
        ...

    def find(self, digest: bytes) -> ApiKey | None:
        """The key (revoked or not) whose digest this is."""
        ...

    def list(self, namespace: str | None) -> list[ApiKey]:
        """Keys of ``namespace`` (every namespace when None), oldest first."""
        ...

    def revoke(self, key_id: str, namespace: str | None, at_us: int) -> ApiKey:
        """Revoke (idempotent: the first revocation time stays); ``NotFound`` ``key_not_found``
        when no key has this id in ``namespace`` (any namespace when None)."""
        ...
