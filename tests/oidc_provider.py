"""A stand-in OpenID Connect provider for the single sign-on tests: not a real identity provider.

A small Starlette app served by uvicorn on a free loopback port, with what a relying party
uses: the discovery document, an authorization endpoint (a page where the test picks a user
and presses "Sign in"; it remembers the client, redirect URI, PKCE challenge and nonce under a
one-time code), a token endpoint (client authentication with HTTP Basic, the code, redirect URI
and PKCE verifier checked, then an ID token **signed RS256** with joserfc and a key made for
this run) and the JWKS endpoint publishing that key. ``tamper`` lets a test make the next ID
tokens wrong in one way (another nonce, audience or issuer, an expiry in the past, a foreign
signing key), as a misbehaving or malicious provider would.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import uvicorn
from conftest import free_port
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CLIENT_ID = "meterline-dashboard"
CLIENT_SECRET = "s3cret-of-the-test-client"


@dataclass
class Provider:
    url: str
    users: dict[str, dict[str, Any]]
    """Login name -> the claims its ID token carries (besides iss, aud, iat, exp, nonce)."""
    now_s: Any
    """The provider's clock (seconds): the test's server clock, so expiry is judged alike."""
    tamper: dict[str, Any] = field(default_factory=dict)
    """Applied to the next ID tokens: ``nonce``, ``aud``, ``iss``, ``exp_in`` (seconds from now,
    negative: expired) or ``foreign_key`` (signed by a key the JWKS does not publish)."""
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "test-1", "use": "sig"}))

    def id_token(self, code: dict[str, Any]) -> str:
        now = int(self.now_s())
        claims = {
            "iss": self.tamper.get("iss", self.url),
            "aud": self.tamper.get("aud", CLIENT_ID),
            "iat": now,
            "exp": now + int(self.tamper.get("exp_in", 300)),
            "nonce": self.tamper.get("nonce", code["nonce"]),
            **self.users[code["user"]],
        }
        key = RSAKey.generate_key(2048, parameters={"kid": "test-1"}) if self.tamper.get("foreign_key") else self.key
        return jwt.encode({"alg": "RS256", "kid": "test-1"}, claims, key)


def _app(p: Provider) -> Starlette:
    async def discovery(request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": p.url,
                "authorization_endpoint": f"{p.url}/authorize",
                "token_endpoint": f"{p.url}/token",
                "jwks_uri": f"{p.url}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }
        )

    async def jwks(request: Request) -> Response:
        return JSONResponse(KeySet([p.key]).as_dict(private=False))

    async def authorize(request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
            return HTMLResponse("unknown client or response type", 400)
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return HTMLResponse("PKCE (S256) is required", 400)
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(q.get(k, ""))}">'
            for k in ("redirect_uri", "state", "nonce", "code_challenge", "scope")
        )
        options = "".join(f'<option value="{html.escape(u)}">{html.escape(u)}</option>' for u in p.users)
        page = (
            "<!doctype html><title>Test identity provider</title><h1>Test identity provider (stand-in)</h1>"
            f'<form method="post" action="/authorize">{hidden}<label>User <select id="user" name="user">{options}'
            '</select></label> <button id="approve" type="submit">Sign in</button></form>'
        )
        return HTMLResponse(page)

    async def approve(request: Request) -> Response:
        form = await _form(request)
        code = secrets.token_urlsafe(24)
        p.codes[code] = {k: str(form.get(k, "")) for k in ("redirect_uri", "nonce", "code_challenge", "user")}
        target = str(form["redirect_uri"]) + "?" + urlencode({"code": code, "state": str(form.get("state", ""))})
        return RedirectResponse(target, 302)

    async def token(request: Request) -> Response:
        form = await _form(request)
        p.token_requests.append(form)
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return JSONResponse({"error": "invalid_client"}, 401)
        code = p.codes.pop(form.get("code", ""), None)  # one use only
        if code is None or form.get("grant_type") != "authorization_code":
            return JSONResponse({"error": "invalid_grant", "error_description": "unknown or used code"}, 400)
        if form.get("redirect_uri") != code["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "redirect_uri differs"}, 400)
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != code["code_challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE verifier does not match"}, 400)
        issued = {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300}
        return JSONResponse({**issued, "id_token": p.id_token(code)})

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/jwks", jwks),
            Route("/authorize", authorize, methods=["GET"]),
            Route("/authorize", approve, methods=["POST"]),
            Route("/token", token, methods=["POST"]),
            Route("/favicon.ico", favicon),  # a browser asks; a 404 would be a console error
        ]
    )


async def _form(request: Request) -> dict[str, str]:
    """A url-encoded form body (without python-multipart, which only Starlette's own parser needs)."""
    return {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}


class Running:
    def __init__(self, provider: Provider, server: uvicorn.Server, thread: threading.Thread) -> None:
        self.provider, self._server, self._thread = provider, server, thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def start(users: dict[str, dict[str, Any]], now_s: Any) -> Running:
    port = free_port()
    provider = Provider(f"http://127.0.0.1:{port}", users, now_s)
    server = uvicorn.Server(uvicorn.Config(_app(provider), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the test identity provider did not start"
        time.sleep(0.02)
    return Running(provider, server, thread)
