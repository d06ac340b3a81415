"""Dashboard sign-in: an API key in, a signed session cookie out, and CSRF on every form.

- **Sign in** posts an API key (read scope at least). The key is checked as the API checks it;
  the cookie then holds the key's *id* (never its secret), its namespace, a random CSRF token
  and the sign-in time, signed with ``itsdangerous`` under a key derived from the store's
  signing secret. So every process of one store accepts it and a restart keeps sessions.
- **Every request** re-reads the key by id: a revoked key ends its sessions at once; scopes
  and namespace are the key's current ones, so the pages see exactly what the API would.
- **The cookie** is ``HttpOnly`` (scripts cannot read it), ``SameSite=Lax`` (a cross-site form
  post does not carry it), ``Secure`` when the request came over HTTPS, and path ``/ui``; it
  expires ``SESSION_SECONDS`` after sign-in.
- **CSRF**: every state-changing form carries the session's token in a hidden field (htmx
  requests in a header); :func:`check_csrf` compares them in constant time and also refuses a
  cross-origin ``Origin``. The sign-in form has its own token, in a short-lived cookie of its
  own (login CSRF).
- **Single sign-on** (OIDC, optional): the cookie holds the identity's claims that the rules
  read instead of a key id, and every request applies the configured rules to them again, so a
  changed or removed rule (or SSO switched off) takes effect at once. The flow's state, nonce
  and PKCE verifier wait in a short-lived signed cookie of their own (``OIDC_COOKIE``).
- **Sign out** clears the cookie. A copied cookie stays valid until it expires or its key is
  revoked (the cookie is stateless): revoke the key to end every session of it.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from meterline.api.context import Context
from meterline.api.http import read_body
from meterline.config import Config
from meterline.domain.auth.keys import ApiKey, Scope
from meterline.domain.auth.sso import SsoRule, grant, kept_claims
from meterline.domain.errors import Forbidden, InvalidInput

COOKIE = "meterline_session"
LOGIN_COOKIE = "meterline_signin"
OIDC_COOKIE = "meterline_oidc"
OIDC_SECONDS = 600
PATH = "/ui"
SESSION_SECONDS = 12 * 3600
LOGIN_SECONDS = 3600
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
FORM_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: the key it signed in with (as stored now) and its CSRF token. A
    single sign-on session has a key made from its grant (id ``sso:<subject>``, never stored)
    and ``user`` (who signed in)."""

    key: ApiKey
    csrf: str
    user: str | None = None

    @property
    def actor(self) -> str:
        """Who did it, in audit records."""
        return self.key.id if self.user is None else f"sso:{self.user}"

    @property
    def namespace(self) -> str:
        return self.key.namespace

    @property
    def admin(self) -> bool:
        return self.key.allows(Scope.ADMIN)


class Sessions:
    """Issues and reads session cookies for one app."""

    def __init__(self, ctx: Context) -> None:
        secret = ctx.catalog.portal.derived_key("meterline.dashboard.session")
        self._ctx = ctx
        self._session = URLSafeTimedSerializer(secret, salt="session")
        self._login = URLSafeTimedSerializer(secret, salt="sign-in")
        self._oidc = URLSafeTimedSerializer(secret, salt="oidc")
        self.rules = sso_rules(ctx.config)
        """The single sign-on rules (empty: SSO is off)."""

    # -- sign in ------------------------------------------------------------------------------

    def login_token(self, request: Request) -> str:
        """The sign-in form's CSRF token: the one in its cookie, or a new one."""
        current = self._load(self._login, request.cookies.get(LOGIN_COOKIE), LOGIN_SECONDS)
        return current if isinstance(current, str) else secrets.token_urlsafe(24)

    def set_login_cookie(self, response: Response, request: Request, token: str) -> None:
        self._set(response, request, LOGIN_COOKIE, self._login.dumps(token), LOGIN_SECONDS)

    def check_login(self, request: Request, form: dict[str, str]) -> None:
        expected = self._load(self._login, request.cookies.get(LOGIN_COOKIE), LOGIN_SECONDS)
        _check_origin(request)
        if not isinstance(expected, str) or not _same(form.get(CSRF_FIELD), expected):
            raise Forbidden("The sign-in form expired or was not sent by this site; try again", code="csrf_failed")

    def authenticate(self, secret: str) -> ApiKey:
        """The key of ``secret`` if it may read (raises ``Unauthorized``/``Forbidden`` otherwise)."""
        return self._ctx.auth.require_header(f"Bearer {secret.strip()}", Scope.READ)

    def start(self, response: Response, request: Request, key: ApiKey) -> None:
        payload = {"k": key.id, "n": key.namespace, "c": secrets.token_urlsafe(24)}
        self._set(response, request, COOKIE, self._session.dumps(payload), SESSION_SECONDS)
        response.delete_cookie(LOGIN_COOKIE, path=PATH)

    def start_sso(self, response: Response, request: Request, claims: dict[str, Any]) -> None:
        """A session for an identity the rules admit: its kept claims, applied again on every request."""
        payload = {"o": kept_claims(self.rules, claims), "c": secrets.token_urlsafe(24)}
        self._set(response, request, COOKIE, self._session.dumps(payload), SESSION_SECONDS)
        response.delete_cookie(LOGIN_COOKIE, path=PATH)
        response.delete_cookie(OIDC_COOKIE, path=PATH)

    # -- the single sign-on flow --------------------------------------------------------------

    def begin_flow(self, response: Response, request: Request, flow: dict[str, str]) -> None:
        """Keep the flow's state, nonce, PKCE verifier and target until the provider sends the
        browser back (at most ``OIDC_SECONDS``)."""
        self._set(response, request, OIDC_COOKIE, self._oidc.dumps(flow), OIDC_SECONDS)

    def flow(self, request: Request) -> dict[str, str] | None:
        found = self._load(self._oidc, request.cookies.get(OIDC_COOKIE), OIDC_SECONDS)
        if not isinstance(found, dict) or not all(isinstance(found.get(k), str) for k in FLOW):
            return None
        return {k: found[k] for k in FLOW}

    @staticmethod
    def end_flow(response: Response) -> None:
        response.delete_cookie(OIDC_COOKIE, path=PATH, httponly=True, samesite="lax")

    def end(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="lax")

    # -- every request ------------------------------------------------------------------------

    def current(self, request: Request) -> Session | None:
        """The request's session, when its cookie is valid and its key still live (blocking:
        reads the key)."""
        payload = self._load(self._session, request.cookies.get(COOKIE), SESSION_SECONDS)
        if not isinstance(payload, dict):
            return None
        if "o" in payload:
            return self._sso_session(payload)
        key_id, namespace, csrf = payload.get("k"), payload.get("n"), payload.get("c")
        if not (isinstance(key_id, str) and isinstance(namespace, str) and isinstance(csrf, str)):
            return None
        for key in self._ctx.catalog.keys.list(namespace):
            if key.id == key_id and key.revoked_us is None and key.namespace == namespace:
                return Session(key, csrf)
        return None

    def _sso_session(self, payload: dict[str, Any]) -> Session | None:
        claims, csrf = payload.get("o"), payload.get("c")
        if not isinstance(claims, dict) or not isinstance(csrf, str):
            return None
        granted = grant(self.rules, claims)  # no rules (SSO switched off): None
        if granted is None:
            return None
        key = ApiKey(f"sso:{granted.subject}", granted.namespace, granted.label, granted.scopes, "sso", 0)
        return Session(key, csrf, granted.label)

    def _set(self, response: Response, request: Request, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=PATH,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def _load(serializer: URLSafeTimedSerializer, value: str | None, max_age: int) -> object:
        if not value:
            return None
        try:
            loaded: object = serializer.loads(value, max_age=max_age)
        except BadSignature:  # also SignatureExpired
            return None
        return loaded


FLOW = ("state", "nonce", "verifier", "next")


def sso_rules(config: Config) -> list[SsoRule]:
    """The configured single sign-on rules, as the domain reads them (none when SSO is off)."""
    if not config.oidc.enabled:
        return []
    return [
        SsoRule(r.namespace, frozenset(Scope(s) for s in r.scopes), tuple(r.email_domains), dict(r.claims))
        for r in config.oidc.rules
    ]


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (last value of each field)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise InvalidInput("Send the form as application/x-www-form-urlencoded", code="invalid_form")
    body = await read_body(request, FORM_LIMIT)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("The form could not be read", code="invalid_form") from None
    return {name: values[-1] for name, values in fields.items()}


def check_csrf(request: Request, session: Session, form: dict[str, str]) -> None:
    """Refuse a state-changing request without the session's token, or from another origin."""
    _check_origin(request)
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not _same(sent, session.csrf):
        raise Forbidden("The form was not sent by this site (CSRF token missing or wrong)", code="csrf_failed")


def _check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None:  # same-origin form posts of older browsers; the token still decides
        return
    host = request.headers.get("host", "")
    if urlsplit(origin).netloc != host:
        raise Forbidden("The form was sent from another site", code="csrf_failed")


def _same(sent: str | None, expected: str) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())
