"""API keys in memory, by digest."""

from __future__ import annotations

import threading

import msgspec

from meterline.domain.auth.keys import ApiKey
from meterline.domain.errors import NotFound


class MemoryKeys:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_digest: dict[bytes, ApiKey] = {}
        self._digests: dict[str, bytes] = {}  # key id -> digest

    def add(self, key: ApiKey, digest: bytes, *, only_if_none: bool = False) -> bool:
        with self._lock:
            if only_if_none and self._by_digest:
                return False
            self._by_digest[digest] = key
            self._digests[key.id] = digest
            return True

    def find(self, digest: bytes) -> ApiKey | None:
        return self._by_digest.get(digest)

    def list(self, namespace: str | None) -> list[ApiKey]:
        with self._lock:
            keys = [k for k in self._by_digest.values() if namespace is None or k.namespace == namespace]
        return sorted(keys, key=lambda k: k.created_us)

    def revoke(self, key_id: str, namespace: str | None, at_us: int) -> ApiKey:
        with self._lock:
            digest = self._digests.get(key_id, b"")
            key = self._by_digest.get(digest)
            if key is None or namespace not in (None, key.namespace):
                raise NotFound("No API key with this id in this namespace", code="key_not_found")
            if key.revoked_us is None:
                key = self._by_digest[digest] = msgspec.structs.replace(key, revoked_us=at_us)
            return key
