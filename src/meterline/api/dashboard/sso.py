"""Single sign-on for the dashboard: OpenID Connect, authorization code flow with PKCE.

``/ui/sign-in/sso`` makes a fresh state, nonce and PKCE verifier, keeps them (and the page to
return to) in a short-lived signed cookie and sends the browser to the provider. The provider
sends it back to ``/ui/sign-in/sso/callback`` with a code: the state must be the cookie's, the
code is redeemed with the verifier, the ID token is checked (signature, issuer, audience,
expiry, nonce: ``ports.identity``), and the configured rules map its claims to a namespace and
scopes (``domain.auth.sso``). Only then is a session made; any failure shows an error page and
makes none.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from meterline.api.dashboard.signin import safe_next
from meterline.api.dashboard.web import HEADERS, error_page, redirect
from meterline.domain.auth.sso import grant
from meterline.domain.errors import Forbidden, MeterlineError, NotFound, Unauthorized

CALLBACK = "/ui/sign-in/sso/callback"


async def start(request: Request) -> Response:
    board = request.app.state.dashboard
    if board.identity is None:
        return error_page(request, NotFound("Single sign-on is not configured here", code="sso_off"), None)
    flow = {
        "state": secrets.token_urlsafe(32),
        "nonce": secrets.token_urlsafe(32),
        "verifier": secrets.token_urlsafe(64),  # 86 characters, within PKCE's 43-128
        "next": safe_next(request.query_params.get("next")),
    }
    try:
        url = await run_in_threadpool(
            board.identity.authorization_url, _redirect_uri(request), flow["state"], flow["nonce"], flow["verifier"]
        )
    except MeterlineError as exc:
        return error_page(request, exc, None)
    response = RedirectResponse(url, 303, headers=HEADERS)
    board.sessions.begin_flow(response, request, flow)
    return response


async def callback(request: Request) -> Response:
    board = request.app.state.dashboard
    if board.identity is None:
        return error_page(request, NotFound("Single sign-on is not configured here", code="sso_off"), None)
    sessions, params = board.sessions, request.query_params
    flow = sessions.flow(request)
    try:
        if flow is None:
            raise Unauthorized(
                "This sign-in was not started in this browser, or took more than 10 minutes: sign in again",
                code="sso_state_mismatch",
            )
        if not hmac.compare_digest(params.get("state", "").encode(), flow["state"].encode()):
            raise Unauthorized(
                "The identity provider's answer does not belong to this sign-in (state): sign in again",
                code="sso_state_mismatch",
            )
        if "error" in params:
            detail = " ".join(filter(None, (params.get("error"), params.get("error_description"))))
            raise Unauthorized(f"The identity provider did not sign you in: {detail}", code="sso_refused")
        code = params.get("code")
        if not code:
            raise Unauthorized("The identity provider sent no sign-in code", code="sso_failed")
        claims = await run_in_threadpool(
            board.identity.sign_in, code, _redirect_uri(request), flow["verifier"], flow["nonce"]
        )
        if grant(sessions.rules, claims) is None:
            who = claims.get("email") or claims.get("sub")
            raise Forbidden(
                f"{who} signed in, but no rule of this dashboard gives that identity access"
                " (its email domain or claims match none): ask an administrator",
                code="sso_no_access",
            )
    except MeterlineError as exc:
        refused = error_page(request, exc, None)
        sessions.end_flow(refused)
        return refused
    response = redirect(flow["next"])
    sessions.start_sso(response, request, claims)
    return response


def _redirect_uri(request: Request) -> str:
    configured: str = request.app.state.ctx.config.oidc.redirect_url
    return configured or str(request.base_url).rstrip("/") + CALLBACK
