"""API keys in SQLite (hashes only): the :class:`~meterline.ports.keys.KeyStore`."""

from __future__ import annotations

import builtins
import sqlite3
from typing import Any

from meterline.adapters.sqlite.database import Database
from meterline.domain.auth.keys import ApiKey, Scope, hash_key, mint
from meterline.domain.errors import NotFound

_COLUMNS = "id, namespace, name, scopes, prefix, created_us, revoked_us"


class SqliteKeys:
    """Writes are writer tasks; lookups read this thread's read connection."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, key: ApiKey, digest: bytes, *, only_if_none: bool = False) -> bool:
        def task(conn: sqlite3.Connection) -> bool:
            if only_if_none and conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone():
                return False
            _insert(conn, key, digest)
            return True

        return self._db.writer.call(task)

    def find(self, digest: bytes) -> ApiKey | None:
        row = self._db.reader().execute(f"SELECT {_COLUMNS} FROM api_keys WHERE hash = ?", (digest,)).fetchone()
        return None if row is None else _key(row)

    def list(self, namespace: str | None) -> builtins.list[ApiKey]:
        return list_keys(self._db.reader(), namespace)

    def revoke(self, key_id: str, namespace: str | None, at_us: int) -> ApiKey:
        return self._db.writer.call(lambda conn: revoke_key(conn, key_id, namespace, at_us))


def create_key(
    conn: sqlite3.Connection, namespace: str, name: str, scopes: frozenset[Scope], now_us: int
) -> tuple[ApiKey, str]:
    """Store a new key on ``conn`` (test and benchmark set-up on a bare connection); returns it
    with the full secret."""
    key, secret = mint(namespace, name, scopes, now_us)
    _insert(conn, key, hash_key(secret))
    return key, secret


def _insert(conn: sqlite3.Connection, key: ApiKey, digest: bytes) -> None:
    scope_text = ",".join(sorted(s.value for s in key.scopes))
    conn.execute(
        "INSERT INTO api_keys VALUES (?,?,?,?,?,?,?,NULL)",
        (key.id, key.namespace, key.name, scope_text, digest, key.prefix, key.created_us),
    )


def list_keys(conn: sqlite3.Connection, namespace: str | None) -> builtins.list[ApiKey]:
    sql = f"SELECT {_COLUMNS} FROM api_keys"
    rows = (
        conn.execute(sql + " WHERE namespace = ? ORDER BY created_us", (namespace,))
        if namespace
        else conn.execute(sql + " ORDER BY created_us")
    )
    return [_key(r) for r in rows]


def revoke_key(conn: sqlite3.Connection, key_id: str, namespace: str | None, now_us: int) -> ApiKey:
    args: tuple[object, ...] = (now_us, key_id) if namespace is None else (now_us, key_id, namespace)
    where = "id = ?" if namespace is None else "id = ? AND namespace = ?"
    conn.execute(f"UPDATE api_keys SET revoked_us = coalesce(revoked_us, ?) WHERE {where}", args)
    if conn.execute("SELECT changes()").fetchone()[0] == 0:
        # never echo key_id: a caller who pasted a whole key here must not get it back
        raise NotFound("No API key with this id in this namespace", code="key_not_found")
    return _key(conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone())


def _key(row: tuple[Any, ...]) -> ApiKey:
    id_, ns, name, scopes, prefix, created, revoked = row
    return ApiKey(id_, ns, name, frozenset(Scope(s) for s in scopes.split(",")), prefix, created, revoked)
