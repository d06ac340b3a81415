"""Sign in with an API key, sign out, and the entry pages."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from meterline.api.dashboard.session import read_form
from meterline.api.dashboard.web import View, action, dashboard_of, error_page, page, redirect, view
from meterline.domain.auth.keys import Scope
from meterline.domain.errors import MeterlineError, NotFound


async def sign_in_form(request: Request) -> Response:
    _, sessions = dashboard_of(request)
    token = sessions.login_token(request)
    target = safe_next(request.query_params.get("next"))
    response = page("signin.html", session=None, title="Sign in", csrf=token, next=target, sso=_sso_label(request))
    sessions.set_login_cookie(response, request, token)
    return response


async def sign_in(request: Request) -> Response:
    _, sessions = dashboard_of(request)
    token = sessions.login_token(request)
    target = "/ui/"
    try:
        form = await read_form(request)
        target = safe_next(form.get("next"))
        sessions.check_login(request, form)
        key = await run_in_threadpool(sessions.authenticate, form.get("key", ""))
    except MeterlineError as exc:
        status = getattr(exc, "status", 400)
        refused = page(
            "signin.html", status, session=None, csrf=token, next=target, error=exc.detail, sso=_sso_label(request)
        )
        sessions.set_login_cookie(refused, request, token)
        return refused
    response = redirect(target)
    sessions.start(response, request, key)
    return response


@action(Scope.READ)
async def sign_out(v: View, form: dict[str, str]) -> Response:
    response = redirect("/ui/sign-in")
    v.sessions.end(response)
    return response


@view(Scope.READ)
async def home(v: View) -> Response:
    return v.render("home.html", title="Overview")


async def not_found(request: Request) -> Response:
    """Any other path under /ui: a page, not a JSON problem."""
    return error_page(request, NotFound("There is no such page in the dashboard", code="page_not_found"), None)


async def to_dashboard(request: Request) -> Response:
    return redirect("/ui/")


def _sso_label(request: Request) -> str | None:
    """The single sign-on button's label, when SSO is configured."""
    ctx, _ = dashboard_of(request)
    return ctx.config.oidc.label if ctx.config.oidc.enabled else None


def safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never another host (an open redirect)."""
    if not target:
        return "/ui/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/") or "\\" in target:
        return "/ui/"
    return target
