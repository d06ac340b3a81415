"""Per-customer sliding-window rate limits on the ``limits`` library (moving window).

Headers follow the IETF draft (draft-ietf-httpapi-ratelimit-headers), all in whole seconds:

    RateLimit-Limit: 100
    RateLimit-Remaining: 41
    RateLimit-Reset: 17            seconds until the oldest request in the window leaves it
    RateLimit-Policy: 100;w=60
    Retry-After: 17                (on 429 only; at least 1)

A storage that fails (e.g. Redis down) lets the request through and logs: a rate limiter
outage does not take the app down.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.errors import ConfigurationError
from limits.storage import MovingWindowSupport, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from meterline.domain.errors import ConfigError

log = logging.getLogger("meterline.sdk")
Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class RateState:
    """One request's place in its customer's window."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: int
    window: int

    def headers(self) -> Headers:
        return [
            ("RateLimit-Limit", str(self.limit)),
            ("RateLimit-Remaining", str(self.remaining)),
            ("RateLimit-Reset", str(self.reset_after)),
            ("RateLimit-Policy", f"{self.limit};w={self.window}"),
        ]


class RateLimiter:
    """``hit(customer)`` takes one request from the customer's moving window."""

    def __init__(self, limit: str, storage_uri: str = "memory://") -> None:
        self._item = _parse(limit)
        self._storage = _storage(storage_uri)
        self._limiter = MovingWindowRateLimiter(self._storage)
        self.shared = not storage_uri.startswith("memory://")
        """True when the storage is remote (calls may block on the network)."""

    def hit(self, customer: str) -> RateState | None:
        """The customer's state after this request; None when the storage failed (let it through)."""
        try:
            allowed = self._limiter.hit(self._item, customer)
            stats = self._limiter.get_window_stats(self._item, customer)
        except Exception:  # any storage backend's error: fail open, loudly
            log.exception("rate limit storage failed; request let through")
            return None
        # limits' storages keep epoch seconds (time.time), so the reset is measured on that clock
        reset_after = max(0, math.ceil(stats.reset_time - time.time()))
        window = self._item.get_expiry()
        return RateState(allowed, self._item.amount, max(0, stats.remaining), min(reset_after, window), window)


def _parse(limit: str) -> RateLimitItem:
    try:
        return parse(limit)
    except ValueError as exc:
        raise ConfigError(f"rate_limit {limit!r} is not a limit such as '100/minute' or '2 per 1 second'") from exc


def _storage(uri: str) -> Storage:
    try:
        storage = storage_from_string(uri)
    except ConfigurationError as exc:
        raise ConfigError(
            f"rate_limit_storage {uri!r} cannot be used ({exc}); for redis:// run: pip install 'limits[redis]'"
        ) from exc
    if not isinstance(storage, Storage) or not isinstance(storage, MovingWindowSupport):
        raise ConfigError(f"rate_limit_storage {uri!r} must be a synchronous storage with moving-window support")
    return storage
