"""The server's TLS: one SSLContext from the configured files, and how a client certificate's
subject is written.

- TLS 1.2 at least (``minimum_version``), 1.3 preferred (OpenSSL offers it first); the
  default cipher choice of ``ssl.create_default_context`` for servers.
- With a client CA, clients must present a certificate that CA signed (``CERT_REQUIRED``), or
  may present none (``CERT_OPTIONAL``: then they authenticate with an API key); a certificate
  that does not verify (unknown CA, expired, not yet valid) fails the handshake either way.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path

# RFC 4514 / OpenSSL's RFC2253 short names; other attributes keep OpenSSL's short name as Python gives it
_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def server_ssl_context(
    cert: Path, key: Path | None, client_ca: Path | None = None, client_auth: str = "required"
) -> ssl.SSLContext:
    """The server's context; raises ``OSError`` / ``ssl.SSLError`` for files it cannot use."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key) if key else None)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if client_auth == "required" else ssl.CERT_OPTIONAL
    return ctx


def subject_name(subject: Iterable[Iterable[tuple[str, str]]]) -> str:
    """A subject as ``getpeercert()`` gives it, written as RFC 4514 does (and as
    ``openssl x509 -noout -subject -nameopt RFC2253`` prints it): last RDN first, e.g.
    ``CN=billing,O=Example Corp,C=DE``."""
    rdns = ["+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn) for rdn in subject]
    return ",".join(reversed(rdns))


def _escape(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out
