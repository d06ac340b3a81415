"""TLS facts of a connection in the ASGI scope, and the identity a client certificate carries.

uvicorn does not put the peer's certificate in the scope, so ``meterline serve`` runs its
HTTP protocol with :class:`TLSHttpToolsProtocol`, which adds the ASGI TLS extension
(``scope["extensions"]["tls"]``: ``client_cert_name``, ``tls_version``) to every request of a
TLS connection. ``client_cert_name`` is set only for a certificate the handshake verified
against the configured client CA (``getpeercert()`` answers nothing for an unverified one).

:func:`certificate_key` turns a mapped subject into an ingest-only identity: it is the only
route by which a request without an API key gets in, and only to ``POST /api/v1/events``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from meterline.domain.auth.keys import ApiKey, Scope
from meterline.runtime.tls import subject_name

_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension of a connection, or None for plain TCP."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()  # {} or None unless the handshake verified a client certificate
    subject = cert.get("subject") if cert else None
    return {
        "server_cert": None,
        "client_cert_chain": [],
        "client_cert_name": subject_name(subject) if subject else None,
        "client_cert_error": None,
        "tls_version": _VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class TLSHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, adding the TLS extension to each request's scope."""

    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._tls = tls_extension(transport)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            extensions: dict[str, Any] = dict(self.scope.get("extensions") or {})
            extensions["tls"] = self._tls
            self.scope["extensions"] = extensions


def client_cert_name(scope: Mapping[str, Any]) -> str | None:
    tls = (scope.get("extensions") or {}).get("tls")
    name = tls.get("client_cert_name") if isinstance(tls, dict) else None
    return name if isinstance(name, str) and name else None


def certificate_key(scope: Mapping[str, Any], namespaces: Mapping[str, str]) -> ApiKey | None:
    """The ingest-only identity of a verified client certificate whose subject is mapped, else None."""
    name = client_cert_name(scope) if namespaces else None
    namespace = namespaces.get(name) if name else None
    if name is None or namespace is None:
        return None
    return ApiKey("certificate", namespace, name, frozenset({Scope.INGEST}), "", 0)
