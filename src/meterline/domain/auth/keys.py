"""API keys.

A key is ``ml_<id>_<secret>``: ``id`` (public, shown in listings) and a 32-byte random secret.
Only SHA-256 of the whole key is stored; the secret is shown once, when the key is created.
A plain hash (no salt or KDF) is right here because the secret is random and long, unlike a
password.
"""

from __future__ import annotations

import enum
import hashlib
import secrets

import msgspec

from meterline.domain.errors import InvalidInput
from meterline.domain.identifiers import NAMESPACE_RULE, is_namespace, shown

DEFAULT_NAMESPACE = "default"


class Scope(enum.StrEnum):
    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"


class ApiKey(msgspec.Struct, frozen=True):
    id: str
    namespace: str
    name: str
    scopes: frozenset[Scope]
    prefix: str
    created_us: int
    revoked_us: int | None = None

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes


def new_secret() -> tuple[str, str]:
    """A fresh (key id, full key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"ml_{key_id}_{secrets.token_urlsafe(32)}"


def mint(namespace: str, name: str, scopes: frozenset[Scope], now_us: int) -> tuple[ApiKey, str]:
    """A new key and its full secret (shown once; only :func:`hash_key` of it is stored)."""
    key_id, secret = new_secret()
    return ApiKey(key_id, namespace, name, scopes, secret[:11], now_us), secret


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_scopes(values: list[str] | tuple[str, ...]) -> frozenset[Scope]:
    scopes = set()
    for value in values:
        try:
            scopes.add(Scope(value))
        except ValueError:
            raise InvalidInput(
                f"{value!r} is not a scope (use {', '.join(s.value for s in Scope)})", code="invalid_scope"
            ) from None
    if not scopes:
        raise InvalidInput("a key needs at least one scope", code="invalid_scope")
    return frozenset(scopes)


def check_namespace(namespace: str) -> str:
    if not is_namespace(namespace):
        raise InvalidInput(
            f"{shown(namespace)} is not a valid namespace ({NAMESPACE_RULE})",
            code="invalid_namespace",
        )
    return namespace
