"""Portal tokens: the signing secret (made once, kept in the database) and the issued tokens,
so they can be listed and invalidated before they expire."""

from __future__ import annotations

import builtins
import secrets
import sqlite3
from collections.abc import Sequence
from datetime import timedelta

import msgspec

from meterline.adapters.sqlite.database import Database
from meterline.domain.auth.portal import PortalClaims, PortalTokens
from meterline.domain.clock import Clock, to_us
from meterline.domain.errors import PortalTokenInvalid


class SqlitePortal:
    def __init__(self, db: Database, clock: Clock, *, default_ttl: timedelta, max_ttl: timedelta) -> None:
        self._db = db
        self._clock = clock
        secret = db.writer.call(_secret)
        self._tokens = PortalTokens(secret, clock, default_ttl=default_ttl, max_ttl=max_ttl)

    def issue(
        self, namespace: str, subject: str, meters: Sequence[str] | None, ttl: timedelta | None
    ) -> tuple[str, PortalClaims]:
        token, claims = self._tokens.issue(namespace, subject, meters, ttl)

        def task(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO portal_tokens VALUES (?,?,?,?,?,?,NULL)",
                (
                    claims.token_id,
                    namespace,
                    subject,
                    None if claims.meters is None else msgspec.json.encode(list(claims.meters)),
                    to_us(claims.issued_at),
                    to_us(claims.expires_at),
                ),
            )

        self._db.writer.call(task)
        return token, claims

    def verify(self, token: str) -> PortalClaims:
        """A valid, unexpired token that was not invalidated."""
        claims = self._tokens.verify(token)
        row = (
            self._db.reader()
            .execute("SELECT invalidated_us FROM portal_tokens WHERE id = ?", (claims.token_id,))
            .fetchone()
        )
        if row is None or row[0] is not None:
            raise PortalTokenInvalid("the portal token was invalidated", reason="invalidated")
        return claims

    def list(self, namespace: str, limit: int) -> builtins.list[tuple[str, str, builtins.list[str] | None, int, int]]:
        rows = self._db.reader().execute(
            "SELECT id, subject, meters, created_us, expires_us FROM portal_tokens"
            " WHERE namespace = ? AND invalidated_us IS NULL ORDER BY created_us DESC, id DESC LIMIT ?",
            (namespace, limit),
        )
        return [(i, s, None if m is None else msgspec.json.decode(m), c, e) for i, s, m, c, e in rows]

    def invalidate(self, namespace: str, token_id: str | None, subject: str | None) -> int:
        now = self._clock.now_us()

        def task(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE portal_tokens SET invalidated_us = ? WHERE namespace = ? AND invalidated_us IS NULL"
                " AND (? IS NULL OR id = ?) AND (? IS NULL OR subject = ?)",
                (now, namespace, token_id, token_id, subject, subject),
            )
            return cur.rowcount

        return int(self._db.writer.call(task))


def _secret(conn: sqlite3.Connection) -> bytes:
    row = conn.execute("SELECT value FROM meta WHERE key = 'portal_secret'").fetchone()
    if row is None:
        value = secrets.token_hex(32)
        conn.execute("INSERT INTO meta VALUES ('portal_secret', ?)", (value,))
        return bytes.fromhex(value)
    return bytes.fromhex(row[0])
