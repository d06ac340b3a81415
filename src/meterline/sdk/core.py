"""What the ASGI and WSGI middleware share: the per-request steps apart from their I/O.

Per request, in this order (each step's guarantee):
1. ``customer`` resolves the customer; None skips every other step.
2. Rate limit: a throttled request gets 429 and is neither checked nor metered.
3. Entitlement check (``policy.judge``): a rejected request (402/403/503) is not metered.
4. The app runs; its response gets the rate-limit, warning and check headers.
5. A usage event is queued (never blocking) once the response is done, also when the app failed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Generic

from meterline.sdk.checks import CheckCache
from meterline.sdk.config import MiddlewareConfig, R
from meterline.sdk.events import RequestFacts, usage_event
from meterline.sdk.policy import Problem, Verdict, rate_limited
from meterline.sdk.ratelimit import RateLimiter
from meterline.sdk.sender import EventSender, SenderStats

log = logging.getLogger("meterline.sdk")


class Enforcer(Generic[R]):
    def __init__(self, config: MiddlewareConfig[R], sender: EventSender | None = None) -> None:
        self.config = config
        self.sender = sender or EventSender(config.url, config.api_key, config.sender, config.tls)
        self.limiter = RateLimiter(config.rate_limit, config.rate_limit_storage) if config.rate_limit else None
        self.cache = CheckCache(config.check_cache_ttl, config.clock)

    def customer(self, request: R) -> str | None:
        return self.config.customer(request)

    def rate_limit(self, customer: str) -> Verdict:
        """Step 2. A pass carries the RateLimit-* headers for the app's response."""
        state = self.limiter.hit(customer) if self.limiter else None
        if state is None:
            return Verdict()
        if not state.allowed:
            return Verdict(rate_limited(state))
        return Verdict(headers=state.headers())

    def meter(self, request: R, facts: RequestFacts) -> None:
        """Step 5: never raises, never blocks."""
        if not self.config.meter:
            return
        try:
            extra = self.config.event_data(request, facts.status) if self.config.event_data else None
            event = usage_event(facts, self.config.event_type, self.config.event_source, extra)
        except Exception:  # a user callable's bug must not break the response
            log.exception("meterline usage event could not be built")
            return
        self.sender.submit(event)

    @property
    def stats(self) -> SenderStats:
        return self.sender.stats


def combine(first: Verdict, second: Verdict) -> Verdict:
    """The second step's verdict, with the first step's headers kept on a pass."""
    if second.problem is not None:
        return second
    return Verdict(headers=[*first.headers, *second.headers])


def status_of(problem: Problem) -> str:
    return f"{problem.status} {HTTPStatus(problem.status).phrase}"


def route_template(scope_or_environ: Mapping[str, Any], fallback: str) -> str:
    """Starlette/FastAPI record the matched route in the scope; WSGI apps may set ``meterline.route``."""
    route = scope_or_environ.get("route")
    path = getattr(route, "path", None) if route is not None else scope_or_environ.get("meterline.route")
    return path if isinstance(path, str) and path else fallback
