"""``POST /api/v1/events`` (OpenMeter-compatible ingest) and ``GET /api/v1/events``."""

from __future__ import annotations

import asyncio
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from meterline.adapters.sqlite.ledger import EventFilter
from meterline.api.context import Context
from meterline.api.http import json_response, parse_int, parse_time, read_body
from meterline.api.problems import problem
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.errors import UnsupportedMediaType
from meterline.domain.events.decode import decode_events, split_body
from meterline.domain.events.model import Outcome, Status

SHAPES = {
    "application/cloudevents+json": "single",
    "application/cloudevents-batch+json": "batch",
    "application/json": "any",
}


async def ingest(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    started = time.perf_counter()
    key = ctx.auth.require(request, Scope.INGEST)
    shape = SHAPES.get(request.headers.get("content-type", "").split(";")[0].strip().lower())
    if shape is None:
        raise UnsupportedMediaType(
            "Send application/cloudevents+json, application/cloudevents-batch+json or application/json",
        )
    body = await read_body(request, ctx.config.server.max_body_bytes)
    raws = split_body(body, shape, ctx.config.server.max_events_per_request)
    candidates = decode_events(raws, key.namespace, ctx.clock.now_us(), ctx.limits)
    outcomes = await asyncio.wrap_future(ctx.backend.ledger.append(key.namespace, candidates))
    ctx.metrics.observe(outcomes)
    ctx.metrics.latency.observe(time.perf_counter() - started)
    if "return=representation" in request.headers.get("prefer", ""):
        return json_response(_report(outcomes), 200)
    rejected = [o for o in outcomes if o.status is Status.REJECTED]
    if rejected:
        return problem(
            request,
            400,
            "events_rejected",
            "Some events were rejected",
            f"{len(rejected)} of {len(outcomes)} events were rejected; the others were recorded",
            accepted=sum(o.status is Status.ACCEPTED for o in outcomes),
            duplicates=sum(o.status is Status.DUPLICATE for o in outcomes),
            rejected=[_item(o) for o in rejected],
        )
    return Response(status_code=204)


def _report(outcomes: list[Outcome]) -> dict[str, object]:
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


async def list_events(request: Request) -> Response:
    """OpenMeter's list: newest first, ``from`` defaults to 72 hours ago, ``limit`` 1-100."""
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    q = request.query_params
    start = parse_time("from", q.get("from"))
    if start is None:
        start = ctx.clock.now_us() - 72 * 3600 * 1_000_000
    f = EventFilter(
        subject=q.get("subject"),
        event_id=q.get("id"),
        start_us=start,
        end_us=parse_time("to", q.get("to")),
        received_from_us=parse_time("ingestedAtFrom", q.get("ingestedAtFrom")),
        received_to_us=parse_time("ingestedAtTo", q.get("ingestedAtTo")),
    )
    rows = ctx.backend.ledger.list(key.namespace, f, limit=parse_int("limit", q.get("limit"), 100, 1, 100))
    return json_response(
        [
            {"event": msgspec.Raw(r.raw), "ingestedAt": rfc3339(r.received_us), "storedAt": rfc3339(r.received_us)}
            for r in rows
        ]
    )
