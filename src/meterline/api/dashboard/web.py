"""What every dashboard page shares: templates, the signed-in view, freshness stamps, charts
with their tables and CSV, errors as pages, and the security headers of every answer."""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from meterline.api.context import Context
from meterline.api.dashboard.session import Session, Sessions, check_csrf, read_form
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import from_us
from meterline.domain.errors import Forbidden, InvalidInput, MeterlineError, Unauthorized
from meterline.runtime import freshness

NONE = "\N{EN DASH}"
"""Shown where a number does not exist (no data yet), so it is not mistaken for a zero."""
P = ParamSpec("P")
T = TypeVar("T")

HEADERS = {
    # scripts and styles only from this server (no CDN, no inline script); uPlot sets inline
    # style attributes from JavaScript, hence 'unsafe-inline' for styles alone
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@functools.cache
def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("meterline.api.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = number
    env.filters["when"] = when
    env.filters["pct"] = percent
    env.filters["period"] = period
    env.filters["money"] = money
    env.globals["qs"] = lambda params: urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return env


@dataclass(frozen=True, slots=True)
class Stamp:
    """How fresh a block of numbers is: the ledger position (and that entry's receipt time)
    its usage reads reflect, or only the time it was read for numbers that are not usage."""

    read_us: int
    position: int | None = None
    as_of_us: int | None = None


@dataclass
class Chart:
    """A time series chart and the table beside it (exact values; the chart draws floats)."""

    id: str
    title: str
    unit: str
    tz: str
    x: list[int]
    series: dict[str, list[Decimal | None]]
    stamp: Stamp
    kind: str = "line"

    def data(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "unit": self.unit,
            "tz": self.tz,
            "kind": self.kind,
            "x": self.x,
            "series": [
                {"label": label, "values": [None if v is None else float(v) for v in values]}
                for label, values in self.series.items()
            ],
        }

    def rows(self) -> list[list[object]]:
        """One row per window: its start (ISO 8601 in the chart's zone), then each series' value."""
        tz = ZoneInfo(self.tz)
        out: list[list[object]] = []
        for i, x in enumerate(self.x):
            start = datetime.fromtimestamp(x, UTC).astimezone(tz).isoformat()
            out.append([start, *(values[i] for values in self.series.values())])
        return out

    def csv(self) -> Response:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([f"window start ({self.tz})", *(f"{label} ({self.unit})" for label in self.series)])
        writer.writerows([_csv_safe("" if cell is None else str(cell)) for cell in row] for row in self.rows())
        name = quote(f"{self.id}.csv")
        return Response(
            buf.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={**HEADERS, "Content-Disposition": f"attachment; filename={name}"},
        )


def filled(starts: Sequence[int], rows: Sequence[tuple[int, Decimal]]) -> list[Decimal | None]:
    """Values on every window start of ``starts`` (None where ``rows`` has no window), so a chart's
    time axis covers the whole range asked for."""
    at = dict(rows)
    return [at.get(s) for s in starts]


@dataclass
class View:
    """One signed-in page request."""

    request: Request
    ctx: Context
    session: Session
    sessions: Sessions
    flash: list[str] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.session.namespace

    def q(self, name: str, default: str = "") -> str:
        return self.request.query_params.get(name, default).strip()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A blocking service call, in the thread pool."""
        return await run_in_threadpool(fn, *args, **kwargs)

    def stamp(self) -> Stamp:
        """The freshness of the usage read so far on this request."""
        record = freshness.current()
        now = self.ctx.clock.now_us()
        if record is None:
            return Stamp(now)
        return Stamp(now, record.as_of_position, record.as_of_us)

    def render(self, template: str, status: int = 200, **values: Any) -> Response:
        csv_of = self.q("csv")
        charts = [v for v in values.values() if isinstance(v, Chart)] + [
            c for v in values.values() if isinstance(v, list) for c in v if isinstance(c, Chart)
        ]
        if csv_of:
            for chart in charts:
                if chart.id == csv_of:
                    return chart.csv()
            raise InvalidInput(f"this page has no chart {csv_of!r}", code="invalid_parameter")
        return page(template, status, view=self, session=self.session, **values)


def page(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = templates().get_template(template).render(**values)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def dashboard_of(request: Request) -> tuple[Context, Sessions]:
    ctx: Context = request.app.state.ctx
    sessions: Sessions = request.app.state.dashboard.sessions
    return ctx, sessions


Handler = Callable[[View], Awaitable[Response]]
FormHandler = Callable[[View, dict[str, str]], Awaitable[Response]]


def view(scope: Scope = Scope.READ) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A page for a signed-in key with ``scope``; others are sent to sign in (or refused)."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def route(request: Request) -> Response:
            v = await _signed_in(request, scope)
            if isinstance(v, Response):
                return v
            _eventual_unless_asked(request)
            try:
                return await handler(v)
            except MeterlineError as exc:
                return error_page(request, exc, v.session)

        return route

    return wrap


def action(scope: Scope) -> Callable[[FormHandler], Callable[[Request], Awaitable[Response]]]:
    """A state-changing form post: signed in with ``scope``, the CSRF token checked first."""

    def wrap(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def route(request: Request) -> Response:
            v = await _signed_in(request, Scope.READ)
            if isinstance(v, Response):
                return v
            try:
                form = await read_form(request)
                check_csrf(request, v.session, form)
                if not v.session.key.allows(scope):
                    raise Forbidden(f"This needs a key with the {scope.value!r} scope", code="missing_scope")
                return await handler(v, form)
            except MeterlineError as exc:
                return error_page(request, exc, v.session)

        return route

    return wrap


async def _signed_in(request: Request, scope: Scope) -> View | Response:
    ctx, sessions = dashboard_of(request)
    session = await run_in_threadpool(sessions.current, request)
    if session is None:
        if request.method != "GET":
            return error_page(request, Unauthorized("Sign in first", code="signed_out"), None)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/sign-in?{urlencode({'next': target})}", 303, headers=HEADERS)
    if not session.key.allows(scope):
        return error_page(
            request, Forbidden(f"This page needs the {scope.value!r} scope", code="missing_scope"), session
        )
    return View(request, ctx, session, sessions)


def _eventual_unless_asked(request: Request) -> None:
    """Pages answer from what is aggregated (their stamps say how fresh) unless the URL asks for
    ``consistency=strong``, so a page never waits on a busy aggregator."""
    record = freshness.current()
    if record is not None and request.query_params.get("consistency") != "strong":
        record.wait = False


def error_page(request: Request, exc: MeterlineError, session: Session | None) -> Response:
    status = getattr(exc, "status", 400)
    title = f"{status}: {exc.code}"  # the tab says which error, as the heading does
    return page("error.html", status, session=session, title=title, http_status=status, code=exc.code,
                detail=exc.detail)  # fmt: skip


def redirect(path: str, **params: str) -> Response:
    query = urlencode({k: v for k, v in params.items() if v})
    return RedirectResponse(path + (f"?{query}" if query else ""), 303, headers=HEADERS)


# -- filters -----------------------------------------------------------------------------------


def number(value: object) -> str:
    """An exact decimal, grouped by thousands, without a float's noise."""
    if value is None:
        return NONE
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, int | Decimal):
        d = Decimal(value)
        if d == d.to_integral_value():
            return f"{d.quantize(Decimal(1)):,}"
        return f"{d.normalize():,f}"
    return str(value)


def percent(value: Decimal | float | None) -> str:
    if value is None:
        return NONE
    return f"{Decimal(value) * 100:.1f} %"


def period(start_s: int, tz: str = "UTC") -> str:
    """A period by its first day in ``tz`` (periods start at local midnight)."""
    return datetime.fromtimestamp(start_s, zone(tz)).strftime("%Y-%m-%d")


def money(value: Decimal | None) -> str:
    """An amount with at least two decimals (an exact amount is never rounded away)."""
    if value is None:
        return NONE
    exponent = value.as_tuple().exponent
    shown = value if isinstance(exponent, int) and exponent < -2 else value.quantize(Decimal("0.01"))
    return f"{shown:,f}"


def when(us: int | None, tz: str = "UTC") -> str:
    if us is None:
        return NONE
    return from_us(us).astimezone(zone(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"{name[:60]!r} is not an IANA time zone", code="invalid_timezone") from None


def _csv_safe(cell: str) -> str:
    """Cells a spreadsheet would run as a formula are quoted as text."""
    return "'" + cell if cell[:1] in ("=", "+", "@", "\t", "\r") or (cell[:1] == "-" and not _numeric(cell)) else cell


def _numeric(cell: str) -> bool:
    try:
        Decimal(cell.replace(",", ""))
    except ArithmeticError:
        return False
    return True


def columns(rows: Sequence[dict[str, Any]], *names: str) -> list[list[Any]]:
    return [[row.get(n) for n in names] for row in rows]
