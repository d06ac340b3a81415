"""Issued customer-portal tokens and the secret they are signed with."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Protocol

from meterline.domain.auth.portal import PortalClaims


@dataclass(frozen=True, slots=True)
class IssuedToken:
    id: str
    subject: str
    meters: builtins.list[str] | None
    created_us: int
    expires_us: int


class PortalTokenStore(Protocol):
    def signing_secret(self) -> bytes:
        """The store's signing secret (32 random bytes, made once and kept)."""
        ...

    def add(self, namespace: str, claims: PortalClaims) -> None: ...

    def is_live(self, token_id: str) -> bool:
        """Whether the token was issued here and not invalidated since."""
        ...

    def list(self, namespace: str, limit: int) -> builtins.list[IssuedToken]:
        """Tokens not invalidated (expired ones included), newest first."""
        ...

    def invalidate(self, namespace: str, token_id: str | None, subject: str | None, at_us: int) -> int:
        """Invalidate the namespace's live tokens matching every given field; how many."""
        ...
