"""One batch POST and what its answer means; TLS settings; backoff.

``deliver`` never raises: a transport error or an answer becomes a :class:`Delivery`:

- ``done``: meterline answered 2xx; ``accepted``/``duplicates``/``rejected`` from its report
  (``Prefer: return=representation``), rejected reasons counted by ``reason``.
- ``retry``: connection error, timeout, 408, 425, 429 or 5xx, after ``retry_after`` seconds
  at least (the server's ``Retry-After``, seconds or an HTTP date); 401/403 are retried too
  when events are spooled, since fixing the key must not lose them.
- ``refused``: any other answer; retrying the same bytes cannot succeed.
"""

from __future__ import annotations

import logging
import random
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import msgspec

from meterline.client.options import TLSOptions

log = logging.getLogger("meterline.client")
EVENTS_PATH = "/api/v1/events"
BATCH = "application/cloudevents-batch+json"
_RETRY_STATUS = frozenset({408, 425, 429})


@dataclass
class Delivery:
    kind: str  # "done" | "retry" | "refused"
    status: int = 0
    retry_after: float = 0.0
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    detail: str = ""


class _Report(msgspec.Struct):
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    events: list[dict[str, object]] = []


def ssl_context(tls: TLSOptions) -> ssl.SSLContext:
    """A client context: the given CA bundle (or the system's), TLS 1.2 at least, a client certificate if set."""
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


def http_client(url: str, api_key: str | None, timeout: float, tls: TLSOptions) -> httpx.Client:
    headers = {"Content-Type": BATCH, "Prefer": "return=representation"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.Client(base_url=url, headers=headers, timeout=timeout, verify=ssl_context(tls))


def deliver(http: httpx.Client, body: bytes, count: int, *, hold_on_auth: bool) -> Delivery:
    """POST one batch body of ``count`` events."""
    try:
        response = http.post(EVENTS_PATH, content=body)
    except httpx.HTTPError as exc:
        return Delivery("retry", detail=f"{type(exc).__name__}: {exc}"[:300])
    status = response.status_code
    if response.is_success:
        return _report(response, count)
    detail = f"meterline answered {status}: {response.text[:200]}"
    if status in _RETRY_STATUS or status >= 500 or (hold_on_auth and status in (401, 403)):
        return Delivery("retry", status, retry_after(response.headers.get("retry-after")), detail=detail)
    return Delivery("refused", status, detail=detail)


def _report(response: httpx.Response, count: int) -> Delivery:
    if not response.content:  # 204: every event accepted or a duplicate
        return Delivery("done", response.status_code, accepted=count)
    try:
        report = msgspec.json.decode(response.content, type=_Report)
    except msgspec.DecodeError:
        return Delivery("done", response.status_code, accepted=count)
    rejected: dict[str, int] = {}
    for e in report.events:
        if e.get("status") == "rejected":
            reason = str(e.get("reason", "rejected"))
            rejected[reason] = rejected.get(reason, 0) + 1
    return Delivery(
        "done", response.status_code, accepted=report.accepted, duplicates=report.duplicates, rejected=rejected
    )


def retry_after(value: str | None, now: datetime | None = None) -> float:
    """Seconds from a ``Retry-After`` value (delta-seconds or an HTTP date); 0 when absent or unreadable."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff(attempt: int, base: float, cap: float) -> float:
    """Equal jitter: between half and all of ``min(cap, base * 2**attempt)``."""
    top: float = min(cap, base * 2**attempt)
    return top / 2 + random.uniform(0, top / 2)
