"""API keys in SQLite (hashes only)."""

from __future__ import annotations

import sqlite3
from typing import Any

from meterline.domain.auth.keys import ApiKey, Scope, hash_key, new_secret
from meterline.domain.errors import NotFound


def create_key(
    conn: sqlite3.Connection, namespace: str, name: str, scopes: frozenset[Scope], now_us: int
) -> tuple[ApiKey, str]:
    """Store a new key; returns it with the full secret (shown once, never stored)."""
    key_id, secret = new_secret()
    scope_text = ",".join(sorted(s.value for s in scopes))
    conn.execute(
        "INSERT INTO api_keys VALUES (?,?,?,?,?,?,?,NULL)",
        (key_id, namespace, name, scope_text, hash_key(secret), secret[:11], now_us),
    )
    return ApiKey(key_id, namespace, name, scopes, secret[:11], now_us), secret


def find_key(conn: sqlite3.Connection, secret: str) -> ApiKey | None:
    row = conn.execute(
        "SELECT id, namespace, name, scopes, prefix, created_us, revoked_us FROM api_keys WHERE hash = ?",
        (hash_key(secret),),
    ).fetchone()
    return None if row is None else _key(row)


def list_keys(conn: sqlite3.Connection, namespace: str | None) -> list[ApiKey]:
    sql = "SELECT id, namespace, name, scopes, prefix, created_us, revoked_us FROM api_keys"
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
    row = conn.execute(
        "SELECT id, namespace, name, scopes, prefix, created_us, revoked_us FROM api_keys WHERE id = ?", (key_id,)
    ).fetchone()
    return _key(row)


def count_keys(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM api_keys").fetchone()[0])


def _key(row: tuple[Any, ...]) -> ApiKey:
    id_, ns, name, scopes, prefix, created, revoked = row
    return ApiKey(id_, ns, name, frozenset(Scope(s) for s in scopes.split(",")), prefix, created, revoked)
