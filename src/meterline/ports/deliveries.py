"""The store of alert deliveries the notification dispatcher drains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meterline.domain.notify.channels import Channel

PENDING = "PENDING"


@dataclass(frozen=True)
class Due:
    """A delivery to attempt now. ``attempts`` counts the attempts already made."""

    event_id: str
    channel: Channel
    attempts: int
    payload: bytes  # the alert as JSON (standard format), exactly as a standard webhook sends it


class DeliveryStore(Protocol):
    def due(self, now_us: int, limit: int) -> list[Due]:
        """PENDING deliveries whose ``next_attempt_us <= now_us``, oldest first, at most ``limit``.
        A store shared by the dispatchers of several processes hands each delivery to one of
        them, holding it from the others until its outcome is recorded or a claim time passes."""
        ...

    def record(
        self,
        event_id: str,
        channel_id: str,
        *,
        state: str,
        attempts: int,
        next_attempt_us: int | None,
        status_code: int | None,
        error: str | None,
        duration_ms: int | None,
    ) -> None:
        """Store the outcome of an attempt; ``next_attempt_us`` is set only when ``state`` is PENDING."""
        ...
