"""Customer-portal tokens: issue (signed, stored so they can be listed and invalidated),
verify and invalidate."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import timedelta

from meterline.domain.auth.portal import PortalClaims, PortalTokens
from meterline.domain.clock import Clock
from meterline.domain.errors import InvalidInput, PortalTokenInvalid
from meterline.ports.portal import IssuedToken, PortalTokenStore


class PortalService:
    def __init__(self, store: PortalTokenStore, clock: Clock, *, default_ttl: timedelta, max_ttl: timedelta) -> None:
        self._store = store
        self._clock = clock
        self._max_ttl = max_ttl
        self._tokens = PortalTokens(store.signing_secret(), clock, default_ttl=default_ttl, max_ttl=max_ttl)

    def issue(
        self, namespace: str, subject: str, meters: Sequence[str] | None, expires_in: int | None
    ) -> tuple[str, PortalClaims]:
        """A token for ``subject``'s usage of ``meters`` (all when None), valid ``expires_in``
        seconds (default: the configured TTL)."""
        longest = int(self._max_ttl.total_seconds())
        if expires_in is not None and not 1 <= expires_in <= longest:
            raise InvalidInput(f"expiresIn must be between 1 and {longest} seconds", code="invalid_ttl")
        ttl = None if expires_in is None else timedelta(seconds=expires_in)
        token, claims = self._tokens.issue(namespace, subject, meters, ttl)
        self._store.add(namespace, claims)
        return token, claims

    def verify(self, token: str) -> PortalClaims:
        """The claims of a valid, unexpired token that was not invalidated."""
        claims = self._tokens.verify(token)
        if not self._store.is_live(claims.token_id):
            raise PortalTokenInvalid("the portal token was invalidated", reason="invalidated")
        return claims

    def list(self, namespace: str, limit: int) -> list[IssuedToken]:
        return self._store.list(namespace, limit)

    def invalidate(self, namespace: str, token_id: str | None, subject: str | None) -> int:
        """Invalidate one token (``token_id``) or every token of ``subject`` (or both must match)."""
        if token_id is None and subject is None:
            raise InvalidInput("send `id` or `subject`", code="invalid_invalidate_request")
        return self._store.invalidate(namespace, token_id, subject, self._clock.now_us())

    def derived_key(self, purpose: str) -> bytes:
        """A key for ``purpose`` (e.g. signing dashboard sessions), derived from the stored
        signing secret: stable across restarts and shared by every process of the store, and
        never the portal-token key itself."""
        return hmac.new(self._store.signing_secret(), purpose.encode(), hashlib.sha256).digest()
