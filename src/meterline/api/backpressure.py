"""Backpressure: admission control before any request body is read or decoded.

Two bounds hold for the whole server (``[server]`` in the config):

- ``max_requests_in_flight``: API requests being handled at once;
- ``max_body_bytes_in_flight``: request-body bytes held at once. A request is charged its
  ``Content-Length`` (capped at ``max_body_bytes``) when it is admitted; a body without one
  is charged chunk by chunk as it is read.

A request that would exceed either bound is answered **503** ``overloaded`` (operational code
METER-002) with ``Retry-After``: its body is never decoded or kept. It is read and dropped chunk
by chunk before the answer (an HTTP/1.1 client reads the answer only once it has sent its body
anyway), so that nothing of it stays buffered with the connection; a client that sent
``Expect: 100-continue`` is answered at once, without its body, and the connection closed.
Refusing costs almost nothing and memory stays within the bounds however many clients connect.
Everything admitted holds its charge until its answer is sent. The writer's
own queue is bounded as well (``storage.max_queued_writes``). ``/healthz``, ``/readyz`` and
``/metrics`` are never refused, so an overloaded server still reports how it is.

The bounds are global, not per API key: one heavy client can make others retry too (the
Retry-After answer is what tells every client to slow down).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterline.api.incidents import IncidentLog
from meterline.api.problems import problem_for
from meterline.domain.errors import OpsCode, Overloaded

EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})


class Admission:
    """The in-flight counters and their bounds (one per app; only touched on the event loop)."""

    def __init__(
        self,
        max_requests: int,
        max_bytes: int,
        max_body: int,
        incidents: IncidentLog,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_requests, self.max_bytes, self.max_body = max_requests, max_bytes, max_body
        self.requests = 0
        self.bytes = 0
        self.refused = 0
        self.last_refused: float | None = None
        """Monotonic time of the last refusal (for /readyz's METER-002 warning)."""
        self._incidents = incidents
        self._now = now

    def admit(self, declared: int) -> str | None:
        """Take a request charged ``declared`` bytes; or say which bound refuses it."""
        if self.requests >= self.max_requests:
            return f"{self.max_requests} requests are in flight"
        if self.bytes + declared > self.max_bytes:
            return f"{self.max_bytes} bytes of request bodies are in flight"
        self.requests += 1
        self.bytes += declared
        return None

    def charge(self, n: int) -> None:
        """Charge ``n`` more body bytes to an admitted request; raises when over the bound."""
        if self.bytes + n > self.max_bytes:
            self.refuse(f"{self.max_bytes} bytes of request bodies are in flight")
            raise Overloaded(_detail(f"{self.max_bytes} bytes of request bodies are in flight"))
        self.bytes += n

    def release(self, charged: int) -> None:
        self.requests -= 1
        self.bytes -= charged

    def refuse(self, why: str) -> None:
        self.refused += 1
        self.last_refused = self._now()
        self._incidents.note(
            OpsCode.OVERLOADED,
            "ingest buffer full: requests refused with 503 overloaded (%s)",
            why,
            requests_in_flight=self.requests,
            body_bytes_in_flight=self.bytes,
        )


class Backpressure:
    """ASGI middleware applying :class:`Admission` to every API request."""

    def __init__(self, app: ASGIApp, admission: Admission, retry_after: int) -> None:
        self.app = app
        self.admission = admission
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        adm = self.admission
        declared = _content_length(scope)
        charged = 0 if declared is None else min(declared, adm.max_body)
        refusal = adm.admit(charged)
        if refusal is not None:
            adm.refuse(refusal)
            response = problem_for(Request(scope), Overloaded(_detail(refusal)), self.retry_after)
            if _expects_continue(scope):
                response.headers["Connection"] = "close"
            else:
                await _drop_body(receive)
            await response(scope, receive, send)
            return

        async def counted() -> Message:
            nonlocal charged
            message = await receive()
            if message["type"] == "http.request":
                # never beyond max_body: past it the endpoint answers 413, not backpressure
                n = min(len(message.get("body", b"")), adm.max_body - charged)
                adm.charge(n)
                charged += n
            return message

        try:
            await self.app(scope, receive if declared is not None else counted, send)
        finally:
            adm.release(charged)


async def _drop_body(receive: Receive) -> None:
    """Read the request body to its end, keeping none of it."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _expects_continue(scope: Scope) -> bool:
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in scope["headers"])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() and len(value) < 19 else 0
    return None


def _detail(why: str) -> str:
    return f"The server is at its bound ({why}); nothing of this request was recorded. Retry later."
