"""ASGI middleware: enforce and meter every HTTP request (see ``meterline.sdk.core`` for the steps).

    app = MeterlineASGIMiddleware(app, MiddlewareConfig(url=..., api_key=..., customer=by_header))

Lifespan shutdown flushes queued usage events (at most ``sender.close_timeout``) before the
server is told shutdown is complete. Without lifespan, call ``await middleware.aclose()``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread

from meterline.sdk.checks import AsyncCheckClient, Outcome
from meterline.sdk.config import MiddlewareConfig
from meterline.sdk.core import Enforcer, combine, route_template
from meterline.sdk.events import RequestFacts
from meterline.sdk.policy import Headers, Problem, Verdict, judge
from meterline.sdk.sender import EventSender, SenderStats

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MeterlineASGIMiddleware:
    def __init__(self, app: ASGIApp, config: MiddlewareConfig[Scope], *, sender: EventSender | None = None) -> None:
        self.app = app
        self._core = Enforcer(config, sender)
        self._checks = AsyncCheckClient(config.url, config.api_key, config.check_timeout, self._core.cache, config.tls)

    @property
    def stats(self) -> SenderStats:
        """Counters of the usage-event sender: queued, sent, dropped, failed_batches, retries."""
        return self._core.stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._on_lifespan(send))
            return
        customer = self._core.customer(scope) if scope["type"] == "http" else None
        if customer is None:
            await self.app(scope, receive, send)
            return
        start_us, started = self._core.config.clock.now_us(), time.perf_counter()
        verdict = await self._admit(scope, customer)
        if verdict.problem is not None:
            await _send_problem(send, verdict.problem, scope.get("path", "/"))
            return
        status = 500
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in verdict.headers]

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            path = route_template(scope, scope.get("path", "/"))
            facts = RequestFacts(
                customer, scope.get("method", "GET"), path, status, start_us, time.perf_counter() - started
            )
            self._core.meter(scope, facts)

    async def aclose(self) -> None:
        """Flush queued usage events (bounded by ``sender.close_timeout``) and close connections."""
        await anyio.to_thread.run_sync(self._core.sender.close)
        await self._checks.aclose()

    async def _admit(self, scope: Scope, customer: str) -> Verdict:
        limited = await self._rate_limit(customer)
        if limited.problem is not None:
            return limited
        features = self._core.config.features_of(scope)
        outcome: Outcome | None = await self._checks.check(customer, features) if features else None
        return combine(limited, judge(outcome, self._core.config.fail))

    async def _rate_limit(self, customer: str) -> Verdict:
        limiter = self._core.limiter
        if limiter is not None and limiter.shared:  # a network storage must not block the event loop
            return await anyio.to_thread.run_sync(self._core.rate_limit, customer)
        return self._core.rate_limit(customer)

    def _on_lifespan(self, send: Send) -> Send:
        async def send_after_flush(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return send_after_flush


async def _send_problem(send: Send, problem: Problem, instance: str) -> None:
    body = problem.body(instance)
    headers: Headers = problem.response_headers(body)
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    await send({"type": "http.response.start", "status": problem.status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
