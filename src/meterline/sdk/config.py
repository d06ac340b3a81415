"""What the middleware is told: one dataclass per concern, a docstring per field.

``R`` is the request object the user callables receive: the ASGI ``scope`` or the WSGI
``environ``. Both are plain dicts, so the callables are tiny functions of a dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from meterline.client import TLSOptions
from meterline.domain.clock import Clock, SystemClock
from meterline.domain.errors import ConfigError

R = TypeVar("R")

Feature = tuple[str, Decimal | int]
"""``(feature_key, quantity)``: check that ``quantity`` more is allowed (0: "is there access now")."""

FeaturesOf = Sequence[Feature] | Callable[[R], Sequence[Feature]]
EventData = Callable[[R, int], Mapping[str, Any]]


@dataclass(frozen=True)
class SenderOptions:
    """How usage events travel (through the client SDK, ``meterline.client``): a bounded queue
    or an on-disk spool, batches, retries."""

    spool_dir: Path | str | None = None
    """On-disk spool (see docs/client.md): every usage event is written there before the
    response is finished and kept until meterline acknowledged it, so events survive a restart,
    a crash and an outage. Each worker process takes its own slot of the directory. None: a
    bounded memory queue (``max_queue``)."""
    spool_fsync: Literal["always", "interval", "never"] = "interval"
    """The spool's fsync policy (docs/client.md): ``interval`` syncs at most a second after a write."""
    max_queue: int = 10_000
    """Without a spool: events held in memory at most. When full, the newest event is dropped and counted."""
    max_batch: int = 100
    """Events per POST at most."""
    max_delay: float = 0.5
    """Seconds the first queued event waits for a batch to fill before it is sent anyway."""
    max_attempts: int = 10
    """Without a spool: tries per batch (connection errors, 5xx, 429) before it is counted as a
    failed batch. With a spool, a batch is retried until delivered."""
    backoff_base: float = 0.1
    """First retry waits about this many seconds; each later one doubles, with jitter."""
    backoff_max: float = 10.0
    """Longest wait between two tries, in seconds."""
    request_timeout: float = 10.0
    """Timeout of each POST, in seconds."""
    close_timeout: float = 5.0
    """``close()`` and lifespan shutdown wait at most this long for the queue to drain."""

    def validate(self) -> list[str]:
        problems = [
            f"sender.{n} must be >= 1" for n in ("max_queue", "max_batch", "max_attempts") if getattr(self, n) < 1
        ]
        times = ("max_delay", "backoff_base", "backoff_max", "request_timeout", "close_timeout")
        return problems + [f"sender.{n} must be >= 0" for n in times if getattr(self, n) < 0]


@dataclass(frozen=True)
class MiddlewareConfig(Generic[R]):
    """Everything the ASGI and WSGI middleware need; validated as a whole on construction."""

    url: str
    """Base URL of the meterline server, e.g. ``http://127.0.0.1:8888``."""
    api_key: str
    """API key with the ``ingest`` scope (metering) and ``read`` scope (entitlement checks)."""
    customer: Callable[[R], str | None]
    """The customer key of a request, or None: that request is neither enforced nor metered."""
    features: FeaturesOf[R] = ()
    """Features to check per request: a static list or a callable of the request. Empty: no check."""
    rate_limit: str | None = None
    """Per-customer sliding-window limit in ``limits`` notation (``"100/minute"``, ``"2 per 1 second"``)."""
    rate_limit_storage: str = "memory://"
    """``limits`` storage URI. ``redis://host:6379`` shares the window between processes."""
    fail: Literal["open", "closed"] = "open"
    """When meterline cannot answer a check: ``open`` lets the request through, ``closed`` answers 503."""
    check_timeout: float = 0.25
    """Seconds a request waits for an entitlement check at most."""
    check_cache_ttl: float = 0.0
    """Seconds a check result is reused for the same (customer, features), and only while the room
    it reported under each limit covers what this process asks; 0 turns the cache off."""
    event_type: str = "request"
    """CloudEvents ``type`` of usage events."""
    event_source: str = "meterline-middleware"
    """CloudEvents ``source`` of usage events."""
    event_data: EventData[R] | None = None
    """Adds members to an event's ``data``: called with the request and the response status."""
    meter: bool = True
    """Send a usage event per request that reached the app."""
    sender: SenderOptions = field(default_factory=SenderOptions)
    tls: TLSOptions = field(default_factory=TLSOptions)
    """CA bundle and client certificate for meterline (checks and usage events): docs/tls.md."""
    clock: Clock = field(default_factory=SystemClock)
    """Source of event times and cache expiry (tests inject a FixedClock)."""

    def __post_init__(self) -> None:
        problems = self.sender.validate()
        if self.tls.key_file and not self.tls.cert_file:
            problems.append("tls.key_file needs tls.cert_file")
        if not self.url.startswith(("http://", "https://")):
            problems.append(f"url {self.url!r} must start with http:// or https://")
        if self.fail not in ("open", "closed"):
            problems.append(f"fail must be 'open' or 'closed', not {self.fail!r}")
        if self.check_timeout <= 0:
            problems.append("check_timeout must be > 0")
        if self.check_cache_ttl < 0:
            problems.append("check_cache_ttl must be >= 0")
        if problems:
            raise ConfigError("Invalid middleware configuration: " + "; ".join(problems), problems=problems)

    def features_of(self, request: R) -> Sequence[Feature]:
        return self.features(request) if callable(self.features) else self.features
