"""Portal tokens in PostgreSQL (:class:`~meterline.ports.portal.PortalTokenStore`): the signing
secret (made once by whichever node asks first, then shared) and the issued tokens."""

from __future__ import annotations

import builtins
import secrets

import msgspec

from meterline.adapters.postgres.database import PgDatabase
from meterline.domain.auth.portal import PortalClaims
from meterline.domain.clock import to_us
from meterline.ports.portal import IssuedToken


class PgPortal:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db
        self._secret: bytes | None = None

    def signing_secret(self) -> bytes:
        if self._secret is None:
            with self._db.tx() as conn:
                # the first insert wins; every node then reads the same secret
                conn.execute(
                    "INSERT INTO meta VALUES ('portal_secret', %s) ON CONFLICT (key) DO NOTHING",
                    (secrets.token_hex(32),),
                )
                row = conn.execute("SELECT value FROM meta WHERE key = 'portal_secret'").fetchone()
            assert row is not None
            self._secret = bytes.fromhex(row[0])
        return self._secret

    def add(self, namespace: str, claims: PortalClaims) -> None:
        meters = None if claims.meters is None else msgspec.json.encode(list(claims.meters))
        with self._db.tx() as conn:
            conn.execute(
                "INSERT INTO portal_tokens VALUES (%s,%s,%s,%s,%s,%s,NULL)",
                (claims.token_id, namespace, claims.subject, meters, to_us(claims.issued_at), to_us(claims.expires_at)),
            )

    def is_live(self, token_id: str) -> bool:
        with self._db.tx() as conn:
            row = conn.execute("SELECT invalidated_us FROM portal_tokens WHERE id = %s", (token_id,)).fetchone()
        return row is not None and row[0] is None

    def list(self, namespace: str, limit: int) -> builtins.list[IssuedToken]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT id, subject, meters, created_us, expires_us FROM portal_tokens"
                " WHERE namespace = %s AND invalidated_us IS NULL ORDER BY created_us DESC, id DESC LIMIT %s",
                (namespace, limit),
            ).fetchall()
        return [IssuedToken(i, s, None if m is None else msgspec.json.decode(m), c, e) for i, s, m, c, e in rows]

    def invalidate(self, namespace: str, token_id: str | None, subject: str | None, at_us: int) -> int:
        with self._db.tx() as conn:
            cur = conn.execute(
                "UPDATE portal_tokens SET invalidated_us = %(at)s WHERE namespace = %(ns)s AND invalidated_us IS NULL"
                " AND (%(id)s::text IS NULL OR id = %(id)s) AND (%(subject)s::text IS NULL OR subject = %(subject)s)",
                {"at": at_us, "ns": namespace, "id": token_id, "subject": subject},
            )
            return cur.rowcount
