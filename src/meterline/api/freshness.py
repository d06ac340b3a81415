"""Freshness headers: every answer says how fresh its usage numbers are.

A pure ASGI middleware that opens a ``runtime.freshness`` record per HTTP request and, when
the answer starts, adds:

- on an ingest answer, ``Meterline-Ledger-Position``: the ledger position covering the
  request's events;
- on any answer that read usage (meter and portal queries, entitlement values, checks and
  history, invoice previews and billing runs), ``Meterline-As-Of-Position`` (every ledger entry
  up to it is reflected) and, when known, ``Meterline-As-Of`` (when that entry was received).

By default a usage read waits, at most ``aggregation.max_wait``, until the aggregator has
applied the ledger position current when the read started, so a caller reads its own writes.
``?consistency=eventual`` on the request skips the wait (the answer is whatever is aggregated,
and its headers say which position that is).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterline.domain.clock import from_us
from meterline.runtime import freshness


class FreshnessHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        record = freshness.begin(wait=("consistency", "eventual") not in query)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += _headers(record)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _headers(record: freshness.Freshness) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    if record.ingested is not None:
        out.append((freshness.INGEST_POSITION.encode(), str(record.ingested).encode()))
    if record.as_of_position is not None:
        out.append((freshness.AS_OF_POSITION.encode(), str(record.as_of_position).encode()))
        if record.as_of_us:
            stamp = from_us(record.as_of_us).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            out.append((freshness.AS_OF.encode(), stamp.encode()))
    return out
