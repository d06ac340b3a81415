"""The dashboard's OpenID Connect relying party: authorization code flow with PKCE.

Authlib builds the protocol messages (the authorization request, PKCE's S256 challenge, the
token request body); joserfc (Authlib's JOSE library) verifies the ID token's signature with
the provider's published keys and its registered claims. The provider's discovery document
and keys are fetched when first needed and kept; keys are fetched again once when a token is
signed by a key id not seen yet (the provider rotated its keys).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

from meterline.domain.errors import ProviderUnavailable, Unauthorized

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""Signatures accepted on ID tokens: asymmetric only (never ``none``, never a MAC keyed with
the client secret)."""
WRONG = {
    "aud": "is for another client (audience)",
    "nonce": "does not answer this sign-in (nonce)",
    "iss": "is from another issuer",
}
LEEWAY_S = 60
"""Clock difference tolerated between this server and the provider, in seconds."""


class OidcProvider:
    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        scopes: list[str],
        now_s: Callable[[], int],
        timeout: float = 10.0,
    ) -> None:
        self._issuer = issuer.rstrip("/")
        self._client_id = client_id
        self._secret = client_secret
        self._scope = " ".join(dict.fromkeys(["openid", *scopes]))
        self._now_s = now_s
        self._timeout = timeout
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None

    # -- the two steps ------------------------------------------------------------------------

    def authorization_url(self, redirect_uri: str, state: str, nonce: str, verifier: str) -> str:
        endpoint = self._meta()["authorization_endpoint"]
        url: str = prepare_grant_uri(
            endpoint,
            self._client_id,
            "code",
            redirect_uri=redirect_uri,
            scope=self._scope,
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        return url

    def sign_in(self, code: str, redirect_uri: str, verifier: str, nonce: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": self._client_id,
        }
        auth = (self._client_id, self._secret) if self._secret else None
        try:
            r = httpx.post(self._meta()["token_endpoint"], data=form, auth=auth, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"The identity provider's token endpoint could not be reached: {exc}") from None
        if r.status_code != 200:
            raise Unauthorized(
                f"The identity provider refused the sign-in code ({r.status_code}: {_error_of(r)})", code="sso_failed"
            )
        id_token = _json(r).get("id_token")
        if not isinstance(id_token, str):
            raise Unauthorized("The identity provider answered without an ID token", code="sso_failed")
        return self._verify(id_token, nonce)

    # -- the ID token -------------------------------------------------------------------------

    def _verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        try:
            token = jwt.decode(id_token, self._key_set(id_token), algorithms=list(ALGORITHMS))
        except BadSignatureError:
            raise Unauthorized("The ID token's signature is not the provider's", code="sso_failed") from None
        except JoseError as exc:
            raise Unauthorized(f"The ID token could not be read: {exc.description or exc}", code="sso_failed") from None
        registry = jwt.JWTClaimsRegistry(
            now=self._now_s,
            leeway=LEEWAY_S,
            iss={"essential": True, "value": self._meta()["issuer"]},
            aud={"essential": True, "value": self._client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        claims = token.claims
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise Unauthorized("The ID token has expired", code="sso_failed") from None
        except (InvalidClaimError, MissingClaimError) as exc:
            what = WRONG.get(exc.claim, f"has a missing or wrong claim ({exc.claim})")
            raise Unauthorized(f"The ID token {what}", code="sso_failed") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self._client_id:
            raise Unauthorized("The ID token is for several clients and not authorized for this one (azp)",
                               code="sso_failed")  # fmt: skip
        return dict(claims)

    def _key_set(self, id_token: str) -> KeySet:
        kid = _kid(id_token)
        with self._lock:
            keys = self._keys
        if keys is None or (kid is not None and not any(k.kid == kid for k in keys.keys)):
            keys = KeySet.import_key_set(_json(self._get(self._meta()["jwks_uri"])))  # type: ignore[arg-type]
            with self._lock:
                self._keys = keys
        return keys

    # -- discovery ----------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is not None:
                return self._metadata
        found = _json(self._get(f"{self._issuer}/.well-known/openid-configuration"))
        if str(found.get("issuer", "")).rstrip("/") != self._issuer:
            named = found.get("issuer")
            raise ProviderUnavailable(f"The provider's discovery document names another issuer: {named!r}")
        needed = ("authorization_endpoint", "token_endpoint", "jwks_uri")
        missing = [k for k in needed if not isinstance(found.get(k), str)]
        if missing:
            raise ProviderUnavailable(f"The provider's discovery document lacks {', '.join(missing)}")
        with self._lock:
            self._metadata = found
        return found

    def _get(self, url: str) -> httpx.Response:
        try:
            r = httpx.get(url, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"The identity provider could not be reached ({url}): {exc}") from None
        if r.status_code != 200:
            raise ProviderUnavailable(f"The identity provider answered {r.status_code} for {url}")
        return r


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        found = r.json()
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise ProviderUnavailable(f"The identity provider answered {r.request.url} with something other than JSON")
    return found


def _error_of(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    return str(body.get("error_description") or body.get("error")) if isinstance(body, dict) else r.text[:200]


def _kid(id_token: str) -> str | None:
    try:
        header = jws.extract_compact(id_token.encode()).protected
    except (JoseError, ValueError):
        return None
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None
