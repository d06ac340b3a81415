"""WSGI middleware: enforce and meter every request (see ``meterline.sdk.core`` for the steps).

    app = MeterlineWSGIMiddleware(app, MiddlewareConfig(url=..., api_key=..., customer=by_header))

A request's duration ends when the server closes the response iterable. Queued usage events
are flushed by ``close()`` and, as a last resort, at interpreter exit (bounded by
``sender.close_timeout``). The route template is ``environ["meterline.route"]`` when the app
sets it, else ``SCRIPT_NAME + PATH_INFO``.
"""

from __future__ import annotations

import atexit
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from meterline.sdk.checks import CheckClient, Outcome
from meterline.sdk.config import MiddlewareConfig
from meterline.sdk.core import Enforcer, combine, route_template, status_of
from meterline.sdk.events import RequestFacts
from meterline.sdk.policy import Verdict, judge
from meterline.sdk.sender import EventSender, SenderStats

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class MeterlineWSGIMiddleware:
    def __init__(self, app: WSGIApp, config: MiddlewareConfig[Environ], *, sender: EventSender | None = None) -> None:
        self.app = app
        self._core = Enforcer(config, sender)
        self._checks = CheckClient(config.url, config.api_key, config.check_timeout, self._core.cache, config.tls)
        atexit.register(self._core.sender.close)

    @property
    def stats(self) -> SenderStats:
        """Counters of the usage-event sender: queued, sent, dropped, failed_batches, retries."""
        return self._core.stats

    def close(self, timeout: float | None = None) -> SenderStats:
        """Flush queued usage events (at most ``timeout``, default ``sender.close_timeout``)."""
        self._checks.close()
        return self._core.sender.close(timeout)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        customer = self._core.customer(environ)
        if customer is None:
            return self.app(environ, start_response)
        start_us, started = self._core.config.clock.now_us(), time.perf_counter()
        verdict = self._admit(environ, customer)
        if verdict.problem is not None:
            body = verdict.problem.body(environ.get("PATH_INFO", "/"))
            start_response(status_of(verdict.problem), verdict.problem.response_headers(body))
            return [body]
        status = [500]

        def start_with_headers(line: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None) -> Any:
            status[0] = int(line.split(" ", 1)[0])
            return start_response(line, [*headers, *verdict.headers], exc_info)

        def done() -> None:
            path = route_template(environ, environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "/"))
            method = environ.get("REQUEST_METHOD", "GET")
            facts = RequestFacts(customer, method, path, status[0], start_us, time.perf_counter() - started)
            self._core.meter(environ, facts)

        try:
            result = self.app(environ, start_with_headers)
        except BaseException:
            done()
            raise
        return _ClosingIterable(result, done)

    def _admit(self, environ: Environ, customer: str) -> Verdict:
        limited = self._core.rate_limit(customer)
        if limited.problem is not None:
            return limited
        features = self._core.config.features_of(environ)
        outcome: Outcome | None = self._checks.check(customer, features) if features else None
        return combine(limited, judge(outcome, self._core.config.fail))


class _ClosingIterable:
    """Passes the app's body through and calls ``on_close`` exactly once when the server closes it."""

    def __init__(self, inner: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._inner = inner
        self._on_close: Callable[[], None] | None = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            if self._on_close is not None:
                on_close, self._on_close = self._on_close, None
                on_close()
