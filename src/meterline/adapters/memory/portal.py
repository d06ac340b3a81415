"""Issued portal tokens and their signing secret, in memory (the secret lives as long as the
process, so tokens do not survive a restart)."""

from __future__ import annotations

import builtins
import secrets
import threading
from dataclasses import dataclass

from meterline.domain.auth.portal import PortalClaims
from meterline.domain.clock import to_us
from meterline.ports.portal import IssuedToken


@dataclass
class _Row:
    namespace: str
    token: IssuedToken
    invalidated_us: int | None = None


class MemoryPortal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(32)
        self._rows: dict[str, _Row] = {}

    def signing_secret(self) -> bytes:
        return self._secret

    def add(self, namespace: str, claims: PortalClaims) -> None:
        meters = None if claims.meters is None else list(claims.meters)
        token = IssuedToken(claims.token_id, claims.subject, meters, to_us(claims.issued_at), to_us(claims.expires_at))
        with self._lock:
            self._rows[claims.token_id] = _Row(namespace, token)

    def is_live(self, token_id: str) -> bool:
        row = self._rows.get(token_id)
        return row is not None and row.invalidated_us is None

    def list(self, namespace: str, limit: int) -> builtins.list[IssuedToken]:
        with self._lock:
            live = [r.token for r in self._rows.values() if r.namespace == namespace and r.invalidated_us is None]
        return sorted(live, key=lambda t: (t.created_us, t.id), reverse=True)[:limit]

    def invalidate(self, namespace: str, token_id: str | None, subject: str | None, at_us: int) -> int:
        with self._lock:
            hits = [
                r
                for r in self._rows.values()
                if r.namespace == namespace
                and r.invalidated_us is None
                and token_id in (None, r.token.id)
                and subject in (None, r.token.subject)
            ]
            for r in hits:
                r.invalidated_us = at_us
        return len(hits)
