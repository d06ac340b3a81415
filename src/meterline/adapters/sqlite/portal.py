"""Portal tokens in SQLite (:class:`~meterline.ports.portal.PortalTokenStore`): the signing
secret (made once, kept in the database) and the issued tokens, so they can be listed and
invalidated before they expire."""

from __future__ import annotations

import builtins
import secrets
import sqlite3

import msgspec

from meterline.adapters.sqlite.database import Database
from meterline.domain.auth.portal import PortalClaims
from meterline.domain.clock import to_us
from meterline.ports.portal import IssuedToken


class SqlitePortal:
    def __init__(self, db: Database) -> None:
        self._db = db

    def signing_secret(self) -> bytes:
        return self._db.writer.call(_secret)

    def add(self, namespace: str, claims: PortalClaims) -> None:
        meters = None if claims.meters is None else msgspec.json.encode(list(claims.meters))
        row = (claims.token_id, namespace, claims.subject, meters, to_us(claims.issued_at), to_us(claims.expires_at))
        self._db.writer.call(lambda conn: conn.execute("INSERT INTO portal_tokens VALUES (?,?,?,?,?,?,NULL)", row))

    def is_live(self, token_id: str) -> bool:
        row = self._db.reader().execute("SELECT invalidated_us FROM portal_tokens WHERE id = ?", (token_id,)).fetchone()
        return row is not None and row[0] is None

    def list(self, namespace: str, limit: int) -> builtins.list[IssuedToken]:
        rows = self._db.reader().execute(
            "SELECT id, subject, meters, created_us, expires_us FROM portal_tokens"
            " WHERE namespace = ? AND invalidated_us IS NULL ORDER BY created_us DESC, id DESC LIMIT ?",
            (namespace, limit),
        )
        return [IssuedToken(i, s, None if m is None else msgspec.json.decode(m), c, e) for i, s, m, c, e in rows]

    def invalidate(self, namespace: str, token_id: str | None, subject: str | None, at_us: int) -> int:
        def task(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE portal_tokens SET invalidated_us = ? WHERE namespace = ? AND invalidated_us IS NULL"
                " AND (? IS NULL OR id = ?) AND (? IS NULL OR subject = ?)",
                (at_us, namespace, token_id, token_id, subject, subject),
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
