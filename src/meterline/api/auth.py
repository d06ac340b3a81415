"""Bearer API keys: verify, cache briefly, check the scope."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from meterline.api.tls import certificate_key
from meterline.domain.auth.keys import ApiKey, Scope
from meterline.domain.errors import Forbidden, Unauthorized
from meterline.services.keys import KeyService


class Authenticator:
    """Resolves ``Authorization: Bearer <key>``. Positive results are cached for
    ``ttl`` seconds, so a revoked key stops working within that time."""

    def __init__(self, keys: KeyService, ttl: float, cert_namespaces: Mapping[str, str] | None = None) -> None:
        self._keys = keys
        self._ttl = ttl
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._cert_namespaces = dict(cert_namespaces or {})

    def require_ingest(self, scope: Mapping[str, Any], header: str | None) -> ApiKey:
        """The caller of an ingest request: its API key when it sent one (always checked), else a
        verified client certificate whose subject ``server.tls_client_namespaces`` maps."""
        if header is None and self._cert_namespaces:
            key = certificate_key(scope, self._cert_namespaces)
            if key is not None:
                return key
        return self.require_header(header, Scope.INGEST)

    def require(self, request: Request, scope: Scope) -> ApiKey:
        return self.require_header(request.headers.get("authorization"), scope)

    def require_header(self, header: str | None, scope: Scope) -> ApiKey:
        """The key of an ``Authorization`` header's value, if it has ``scope``."""
        key = self._resolve(header)
        if not key.allows(scope):
            raise Forbidden(f"This API key lacks the {scope.value!r} scope", code="missing_scope")
        return key

    def _resolve(self, header: str | None) -> ApiKey:
        if not header:
            raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'", code="missing_api_key")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("The Authorization header must be 'Bearer <key>'", code="invalid_api_key")
        secret = secret.strip()
        now = time.monotonic()
        hit = self._cache.get(secret)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        key = self._keys.authenticate(secret)
        if key is None:
            self._cache.pop(secret, None)
            raise Unauthorized("The API key is unknown or revoked", code="invalid_api_key")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[secret] = (now, key)
        return key
