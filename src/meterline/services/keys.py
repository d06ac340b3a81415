"""API keys: minting (the secret is shown once and only its hash is stored), lookup of a
presented key, listing and revocation; and the one bootstrap admin key of a fresh store."""

from __future__ import annotations

from meterline.domain.auth.keys import DEFAULT_NAMESPACE, ApiKey, Scope, check_namespace, hash_key, mint
from meterline.domain.clock import Clock
from meterline.ports.keys import KeyStore


class KeyService:
    def __init__(self, store: KeyStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def create(self, namespace: str, name: str, scopes: frozenset[Scope]) -> tuple[ApiKey, str]:
        """A new key of ``namespace`` and its full secret (shown only this once)."""
        key, secret = mint(check_namespace(namespace), name, scopes, self._clock.now_us())
        self._store.add(key, hash_key(secret))
        return key, secret

    def bootstrap_admin(self) -> str | None:
        """The secret of a new admin key of the default namespace, if the store has no key yet."""
        key, secret = mint(DEFAULT_NAMESPACE, "bootstrap admin", frozenset({Scope.ADMIN}), self._clock.now_us())
        return secret if self._store.add(key, hash_key(secret), only_if_none=True) else None

    def authenticate(self, secret: str) -> ApiKey | None:
        """The live key ``secret`` is, or None (unknown or revoked)."""
        key = self._store.find(hash_key(secret))
        return None if key is None or key.revoked_us is not None else key

    def list(self, namespace: str | None) -> list[ApiKey]:
        """Keys of ``namespace`` (all when None), oldest first; never their secrets."""
        return self._store.list(namespace)

    def revoke(self, key_id: str, namespace: str | None) -> ApiKey:
        """Revoke a key of ``namespace`` (any when None); revoking twice keeps the first time."""
        return self._store.revoke(key_id, namespace, self._clock.now_us())
