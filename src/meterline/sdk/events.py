"""The usage event for one request, as a CloudEvents 1.0 dict ready for a batch.

The id is a ULID made here, at enqueue time, so every retry of the batch carries the same
(source, id) and meterline counts the request exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ulid import ULID

from meterline.domain.clock import rfc3339

_MS = Decimal("0.001")


@dataclass(frozen=True)
class RequestFacts:
    """What the middleware saw of one request."""

    customer: str
    method: str
    path: str
    status: int
    start_us: int
    duration_s: float


def usage_event(facts: RequestFacts, event_type: str, source: str, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "method": facts.method,
        "path": facts.path,
        "status": facts.status,
        "duration_ms": Decimal(facts.duration_s * 1000).quantize(_MS),
    }
    if extra:
        data.update(extra)
    return {
        "specversion": "1.0",
        "id": str(ULID()),
        "source": source,
        "type": event_type,
        "subject": facts.customer,
        "time": rfc3339(facts.start_us - facts.start_us % 1000),
        "data": data,
    }
