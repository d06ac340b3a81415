"""What every endpoint needs, built once by ``create_app``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meterline.api.auth import Authenticator
from meterline.bootstrap import Catalog
from meterline.config import Config
from meterline.domain.clock import Clock
from meterline.domain.events.decode import Limits
from meterline.ports.ledger import Ledger
from meterline.runtime.metrics import Metrics
from meterline.services.billing import Billing
from meterline.services.dispatch import Dispatcher


@dataclass
class Context:
    config: Config
    clock: Clock
    ledger: Ledger
    auth: Authenticator
    metrics: Metrics
    limits: Limits
    catalog: Catalog
    billing: Billing
    dispatcher: Dispatcher | None = None
    raw_events_from: Callable[[], int] = lambda: 0
    """Where raw events start (µs): a new meter's backfill cannot see earlier ones, removed by
    retention (0: nothing was removed; docs/retention.md)."""
