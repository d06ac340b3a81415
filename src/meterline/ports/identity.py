"""An OpenID Connect provider, as the dashboard's single sign-on sees it."""

from __future__ import annotations

from typing import Any, Protocol


class IdentityProvider(Protocol):
    def authorization_url(self, redirect_uri: str, state: str, nonce: str, verifier: str) -> str:
        """Where to send the browser: the provider's authorization endpoint asking for a code
        (``response_type=code``) with ``state``, ``nonce`` and the S256 challenge of
        ``verifier`` (PKCE). Raises ``Unavailable`` when the provider cannot be reached."""
        ...

    def sign_in(self, code: str, redirect_uri: str, verifier: str, nonce: str) -> dict[str, Any]:
        """Redeem ``code`` (with the PKCE ``verifier``) at the token endpoint and return the
        claims of its ID token once every check passed: signature by the provider's published
        keys, issuer, audience (and ``azp``), expiry and issue time, and ``nonce``. Raises
        ``Unauthorized`` (code ``sso_failed``) saying which check failed."""
        ...
