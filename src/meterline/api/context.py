"""What every endpoint needs, built once by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass

from meterline.api.auth import Authenticator
from meterline.clock import Clock
from meterline.config import Config
from meterline.events.decode import Limits
from meterline.metrics import Metrics
from meterline.notify.dispatch import Dispatcher
from meterline.storage.sqlite.backend import EmbeddedBackend
from meterline.storage.sqlite.counters import History


@dataclass
class Context:
    config: Config
    clock: Clock
    backend: EmbeddedBackend
    auth: Authenticator
    metrics: Metrics
    limits: Limits
    history: History
    dispatcher: Dispatcher | None = None
