"""Requests for the ledger and usage contracts: CloudEvents decoded as ingest decodes them."""

from __future__ import annotations

from typing import Any

import msgspec

from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.events.model import Candidate, Outcome, Status

LIMITS = Limits(10_000, 300_000_000, None)


def event(id_: str, *, subject: str = "c1", time: str = "2026-03-01T11:00:00Z", **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id_,
        "source": data.pop("source", "src"),
        "type": data.pop("type", "t"),
        "subject": subject,
        "time": time,
        "data": data,
    }


def candidates(namespace: str, now_us: int, *events: dict[str, Any] | bytes) -> list[Candidate]:
    """Each event encoded on its own (bytes are sent as they are), as one batch request."""
    body = b"[" + b",".join(e if isinstance(e, bytes) else msgspec.json.encode(e) for e in events) + b"]"
    return decode_events(split_body(body, "batch", 10_000), namespace, now_us, LIMITS)


def append(ledger: Any, namespace: str, now_us: int, *events: dict[str, Any] | bytes) -> list[Outcome]:
    outcomes: list[Outcome] = ledger.append(namespace, candidates(namespace, now_us, *events)).result(10)
    return outcomes


def statuses(outcomes: list[Outcome]) -> list[tuple[Status, bool]]:
    return [(o.status, o.conflict) for o in outcomes]
