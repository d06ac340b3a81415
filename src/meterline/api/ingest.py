"""``POST /api/v1/events`` (OpenMeter-compatible ingest) and ``GET /api/v1/events``.

The POST is the hot path, so it is a plain ASGI app (:class:`IngestEndpoint`, a Starlette
route's endpoint) rather than a ``Request`` handler: it reads the four headers it needs
straight from the scope, the body straight from ``receive``, decodes the whole body in one
typed decode (:func:`decode_body`), waits for the group commit through
:meth:`IngestEndpoint.append` (one event-loop wake-up per commit) and answers a 204 as two
ASGI messages. What it refuses is a :class:`MeterlineError`, rendered by the app's one
problem+json handler as for every other endpoint; admission control (``backpressure.py``) has
run before it. :class:`FastLane` takes the exact path past Starlette's router to it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from meterline.api.completions import Completions
from meterline.api.context import Context
from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_int, parse_time, receive_body
from meterline.api.problems import on_meterline_error, problem
from meterline.api.v2_events import CustomerOf, event_item, scan, subject_of, subjects_of_customers
from meterline.domain.auth.keys import Scope as KeyScope
from meterline.domain.errors import MeterlineError, UnsupportedMediaType
from meterline.domain.events.binary import is_binary, structured
from meterline.domain.events.model import Candidate, Outcome, Status
from meterline.domain.events.typed import decode_body
from meterline.ports.ledger import EventFilter

PATH = "/api/v1/events"
SHAPES = {
    "application/cloudevents+json": "single",
    "application/cloudevents-batch+json": "batch",
    "application/json": "any",
}
_HEADERS = frozenset({b"authorization", b"content-type", b"content-length", b"prefer"})


class IngestEndpoint:
    """``POST /api/v1/events``: authenticate, decode and validate, append, answer."""

    def __init__(self) -> None:
        self._completions: Completions | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._handle(scope, receive, send)
        except MeterlineError as exc:  # answered as the app's error handler answers any endpoint's
            response = await on_meterline_error(Request(scope, receive), exc)
            await response(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx: Context = scope["app"].state.ctx
        started = time.perf_counter()
        head = _headers(scope)
        key = ctx.auth.require_ingest(scope, head.get("authorization"))
        content_type = head.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        binary = is_binary(media, head)
        shape = "single" if binary else SHAPES.get(media)
        if shape is None:
            raise UnsupportedMediaType(
                "Send application/cloudevents+json, application/cloudevents-batch+json or application/json,"
                " or one event in CloudEvents binary mode (ce-specversion, ce-id, ... headers)",
            )
        body = await receive_body(receive, head.get("content-length"), ctx.config.server.max_body_bytes)
        if binary:
            body = structured(head, content_type.strip(), body)
        candidates = decode_body(body, shape, key.namespace, ctx.clock.now_us(), ctx.limits)
        outcomes = await self.append(ctx, key.namespace, candidates)
        ctx.metrics.observe(outcomes)
        ctx.metrics.latency.observe(time.perf_counter() - started)
        representation = "return=representation" in head.get("prefer", "")
        if representation or any(o.status is Status.REJECTED for o in outcomes):
            await _answer(scope, outcomes, representation)(scope, receive, send)
            return
        # fresh messages each time: a middleware may add headers to the list in place
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def append(self, ctx: Context, namespace: str, candidates: list[Candidate]) -> list[Outcome]:
        """The one call into the ledger: durable (per the fsync setting) once it returns."""
        return await self._waiter().wait(ctx.ledger.append(namespace, candidates))

    def _waiter(self) -> Completions:
        loop = asyncio.get_running_loop()
        if self._completions is None or self._completions.loop is not loop:
            self._completions = Completions(loop)
        return self._completions


class FastLane:
    """ASGI middleware: ``POST /api/v1/events`` goes straight to its endpoint, past Starlette's
    exception layer and router (the route stays in the router, with the same endpoint, for
    every other spelling of the path and for the ``Allow`` header of a 405)."""

    def __init__(self, app: ASGIApp, endpoint: IngestEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST":
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _headers(scope: Scope) -> dict[str, str]:
    """The first value of each header the endpoint reads (latin-1, as Starlette decodes them),
    CloudEvents binary-mode attributes (``ce-*``) included."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _HEADERS:
            found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        elif name.startswith(b"ce-"):  # attribute values are UTF-8 (percent-encoded, or not)
            found.setdefault(name.decode("latin-1"), value.decode("utf-8", "replace"))
    return found


def _answer(scope: Scope, outcomes: list[Outcome], representation: bool) -> Response:
    """The report (``Prefer: return=representation``) or, when events were rejected, a problem."""
    if representation:
        return json_response(outcome_report(outcomes), 200)
    rejected = [o for o in outcomes if o.status is Status.REJECTED]
    return problem(
        Request(scope),
        400,
        "events_rejected",
        "Some events were rejected",
        f"{len(rejected)} of {len(outcomes)} events were rejected; the others were recorded",
        accepted=sum(o.status is Status.ACCEPTED for o in outcomes),
        duplicates=sum(o.status is Status.DUPLICATE for o in outcomes),
        rejected=[_item(o) for o in rejected],
    )


def outcome_report(outcomes: list[Outcome]) -> dict[str, object]:
    return {
        "accepted": sum(o.status is Status.ACCEPTED for o in outcomes),
        "duplicates": sum(o.status is Status.DUPLICATE for o in outcomes),
        "rejected": sum(o.status is Status.REJECTED for o in outcomes),
        "events": [_item(o) for o in outcomes],
    }


def _item(o: Outcome) -> dict[str, object]:
    item: dict[str, object] = {"index": o.index, "id": o.id, "source": o.source, "status": o.status.value}
    if o.reason is not None:
        item["reason"] = o.reason.value
        item["message"] = o.message
    if o.status is Status.DUPLICATE:
        item["conflict"] = o.conflict
    return item


@endpoint(KeyScope.READ)
async def list_events(call: Call) -> Response:
    """OpenMeter's list: newest first, ``from`` defaults to 72 hours ago, ``limit`` 1-100;
    ``customerId`` (repeatable) keeps the events of those customers' subjects."""
    q = call.request.query_params
    start = parse_time("from", q.get("from"))
    if start is None:
        start = call.ctx.clock.now_us() - 72 * 3600 * 1_000_000
    f = EventFilter(
        subject=q.get("subject"),
        event_id=q.get("id"),
        start_us=start,
        end_us=parse_time("to", q.get("to")),
        received_from_us=parse_time("ingestedAtFrom", q.get("ingestedAtFrom")),
        received_to_us=parse_time("ingestedAtTo", q.get("ingestedAtTo")),
    )
    limit = parse_int("limit", q.get("limit"), 100, 1, 100)
    wanted = q.getlist("customerId")

    def work() -> list[dict[str, Any]]:
        customer_of = CustomerOf(call)
        if not wanted:
            rows = call.ctx.ledger.list(call.namespace, f, limit=limit)
            return [event_item(r, customer_of) for r in rows]
        return _of_customers(call, f, subjects_of_customers(call, wanted), customer_of, limit)

    return json_response(await call.run(work))


def _of_customers(
    call: Call, f: EventFilter, subjects: frozenset[str], customer_of: CustomerOf, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` events of ``f`` whose subject is one of ``subjects``, newest first
    (reading at most ``v2_events.SCAN`` ledger entries, as the v2 list does)."""
    found: list[dict[str, Any]] = []
    for row in scan(call, f):
        subject = subject_of(row)
        if subject in subjects:
            found.append(event_item(row, customer_of, subject))
            if len(found) == limit:
                break
    return found
