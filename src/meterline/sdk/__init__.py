"""The Python SDK's enforcement middleware: rate-limit, check entitlements and meter each request.

    from meterline.sdk import MiddlewareConfig, MeterlineASGIMiddleware, MeterlineWSGIMiddleware

Modules: ``config`` (settings), ``ratelimit`` (per-customer moving window), ``checks``
(entitlement checks), ``policy`` (verdicts and problem+json), ``events`` + ``sender`` (usage
events, batched in the background), ``core`` (the shared steps), ``asgi`` and ``wsgi``.
"""

from meterline.sdk.asgi import MeterlineASGIMiddleware
from meterline.sdk.checks import CheckResult, FeatureCheck
from meterline.sdk.config import Feature, MiddlewareConfig, SenderOptions
from meterline.sdk.policy import CHECK_HEADER, WARNING_HEADER
from meterline.sdk.ratelimit import RateLimiter
from meterline.sdk.sender import EventSender, SenderStats
from meterline.sdk.wsgi import MeterlineWSGIMiddleware

__all__ = [
    "CHECK_HEADER",
    "WARNING_HEADER",
    "CheckResult",
    "EventSender",
    "Feature",
    "FeatureCheck",
    "MeterlineASGIMiddleware",
    "MeterlineWSGIMiddleware",
    "MiddlewareConfig",
    "RateLimiter",
    "SenderOptions",
    "SenderStats",
]
