"""One helper every endpoint goes through: authenticate, then hand the handler a :class:`Call`.

``@endpoint(Scope.READ)`` turns ``async def handler(call: Call) -> Response`` into a Starlette
endpoint. The handler validates its input, calls one service through :meth:`Call.run` (the
service is blocking: it runs in the thread pool, never on the event loop) and renders.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from meterline.api.context import Context
from meterline.domain.auth.keys import ApiKey, Scope
from meterline.domain.auth.portal import PortalClaims
from meterline.domain.errors import PortalTokenInvalid

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """One authenticated request: the request, the app's context and the caller's key."""

    request: Request
    ctx: Context
    key: ApiKey

    @property
    def namespace(self) -> str:
        return self.key.namespace

    def path(self, name: str) -> str:
        """A path parameter of the route."""
        value: str = self.request.path_params[name]
        return value

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking service call in the thread pool."""
        return await run_in_threadpool(fn, *args, **kwargs)


Handler = Callable[[Call], Awaitable[Response]]


def endpoint(scope: Scope) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Require an API key with ``scope`` before the handler runs."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def route(request: Request) -> Response:
            ctx: Context = request.app.state.ctx
            return await handler(Call(request, ctx, ctx.auth.require(request, scope)))

        return route

    return wrap


@dataclass(frozen=True, slots=True)
class PortalCall:
    """One request carrying a verified customer-portal token instead of an API key."""

    request: Request
    ctx: Context
    claims: PortalClaims


def portal_endpoint(handler: Callable[[PortalCall], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Require a valid portal token (``Authorization: Bearer <token>``) before the handler runs."""

    @functools.wraps(handler)
    async def route(request: Request) -> Response:
        ctx: Context = request.app.state.ctx
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise PortalTokenInvalid("send the portal token as 'Authorization: Bearer <token>'", reason="missing")
        claims = await run_in_threadpool(ctx.catalog.portal.verify, token.strip())
        return await handler(PortalCall(request, ctx, claims))

    return route
