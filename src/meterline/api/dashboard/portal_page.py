"""The customer portal page: opened with a portal token, it shows that customer's own usage per
allowed meter, the entitlement balances of those meters and its invoices, and nothing else.

``/ui/portal?token=<portal token>`` checks the token and moves it into an ``HttpOnly``,
``SameSite=Strict`` cookie scoped to ``/ui/portal`` (expiring with the token), then redirects
to ``/ui/portal``, so the token leaves the address bar, history and any ``Referer`` at once.
Every request verifies the token again: an invalidated or expired token shows nothing. The
page has no dashboard session and no link into the dashboard; what it shows is what the
portal API grants the same token.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from meterline.api.context import Context
from meterline.api.dashboard.executive import span_from
from meterline.api.dashboard.web import Chart, Stamp, filled, page, redirect
from meterline.domain.auth.portal import PortalClaims
from meterline.domain.clock import to_us
from meterline.domain.errors import MeterlineError, PortalTokenInvalid
from meterline.runtime import freshness
from meterline.services.customer_report import CustomerReports
from meterline.services.insights import Grain, Span

COOKIE = "meterline_portal"
PATH = "/ui/portal"


async def portal(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    try:
        token = request.query_params.get("token")
        if token:
            claims = await run_in_threadpool(ctx.catalog.portal.verify, token.strip())
            return _keep(request, token.strip(), claims)
        token = request.cookies.get(COOKIE)
        if not token:
            raise PortalTokenInvalid("open this page with the link that carries your portal token", reason="missing")
        claims = await run_in_threadpool(ctx.catalog.portal.verify, token)
        return await _render(request, ctx, claims)
    except MeterlineError as exc:
        response = page("portal_error.html", getattr(exc, "status", 400), title="Usage", detail=exc.detail)
        response.delete_cookie(COOKIE, path=PATH)
        return response


def _keep(request: Request, token: str, claims: PortalClaims) -> Response:
    response = redirect(PATH)
    left_us = to_us(claims.expires_at) - request.app.state.ctx.clock.now_us()
    seconds = max(1, left_us // 1_000_000)
    response.set_cookie(COOKIE, token, max_age=seconds, path=PATH, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")  # fmt: skip
    return response


async def _render(request: Request, ctx: Context, claims: PortalClaims) -> Response:
    record = freshness.current()
    if record is not None and request.query_params.get("consistency") != "strong":
        record.wait = False
    span, filters = span_from(request.query_params, ctx.clock.now_us())
    reports: CustomerReports = request.app.state.dashboard.reports
    report = await run_in_threadpool(
        reports.portal, claims.namespace, claims.subject, claims.meters, span.start, span.end, filters["tz"]
    )
    now = ctx.clock.now_us()
    stamp = Stamp(now) if record is None else Stamp(now, record.as_of_position, record.as_of_us)
    days = Span(span.start, span.end, Grain.DAY, span.tz).boundaries()[:-1]
    charts = [
        Chart(f"usage-{u.meter.slug}", u.meter.spec.name or u.meter.slug, u.meter.spec.aggregation.value.lower(),
              filters["tz"], days, {u.meter.slug: filled(days, [(r.window_start, r.value) for r in u.windows])},
              stamp, kind="bars")
        for u in report.usage
    ]  # fmt: skip
    csv_of = request.query_params.get("csv")
    if csv_of:
        for chart in charts:
            if chart.id == csv_of:
                return chart.csv()
    name = (report.customer.name if report.customer else None) or report.key
    return page("portal.html", title=f"Usage of {name}", report=report, charts=charts, filters=filters,
                stamp=stamp, expires_us=to_us(claims.expires_at), request=request)  # fmt: skip
