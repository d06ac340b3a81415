"""API keys in PostgreSQL (hashes only): the :class:`~meterline.ports.keys.KeyStore`."""

from __future__ import annotations

import builtins
from typing import Any

from meterline.adapters.postgres.database import PgDatabase, lock
from meterline.domain.auth.keys import ApiKey, Scope
from meterline.domain.errors import NotFound

_SELECT = "SELECT id, namespace, name, scopes, prefix, created_us, revoked_us FROM api_keys"


class PgKeys:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def add(self, key: ApiKey, digest: bytes, *, only_if_none: bool = False) -> bool:
        scope_text = ",".join(sorted(s.value for s in key.scopes))
        with self._db.tx() as conn:
            if only_if_none:
                lock(conn, "api_keys")  # two nodes bootstrapping at once: one first key
                if conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone():
                    return False
            conn.execute(
                "INSERT INTO api_keys (id, namespace, name, scopes, hash, prefix, created_us)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s)",
                (key.id, key.namespace, key.name, scope_text, digest, key.prefix, key.created_us),
            )
            return True

    def find(self, digest: bytes) -> ApiKey | None:
        with self._db.tx() as conn:
            row = conn.execute(_SELECT + " WHERE hash = %s", (digest,)).fetchone()
        return None if row is None else _key(row)

    def list(self, namespace: str | None) -> builtins.list[ApiKey]:
        with self._db.tx() as conn:
            rows = conn.execute(
                _SELECT + " WHERE %(ns)s::text IS NULL OR namespace = %(ns)s ORDER BY created_us, seq",
                {"ns": namespace},
            ).fetchall()
        return [_key(r) for r in rows]

    def revoke(self, key_id: str, namespace: str | None, at_us: int) -> ApiKey:
        with self._db.tx() as conn:
            row = conn.execute(
                "UPDATE api_keys SET revoked_us = coalesce(revoked_us, %(at)s)"
                " WHERE id = %(id)s AND (%(ns)s::text IS NULL OR namespace = %(ns)s)"
                " RETURNING id, namespace, name, scopes, prefix, created_us, revoked_us",
                {"at": at_us, "id": key_id, "ns": namespace},
            ).fetchone()
        if row is None:
            # never echo key_id: a caller who pasted a whole key here must not get it back
            raise NotFound("No API key with this id in this namespace", code="key_not_found")
        return _key(row)


def _key(row: tuple[Any, ...]) -> ApiKey:
    id_, ns, name, scopes, prefix, created, revoked = row
    return ApiKey(id_, ns, name, frozenset(Scope(s) for s in scopes.split(",")), prefix, created, revoked)
