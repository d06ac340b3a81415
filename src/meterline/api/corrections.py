"""Corrections of accepted events (``/api/v1/events/{eventId}``): void, amend, history; and
backfills of historical events (``/api/v1/backfills``).

Corrections and backfills need an ``admin`` key: they change what was counted and billed. The key's id is
recorded as the actor of each correction.
"""

from __future__ import annotations

import dataclasses

import msgspec
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_bytes, json_response, read_body
from meterline.api.ingest import outcome_report
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.errors import InvalidInput, UnsupportedMediaType
from meterline.domain.events.corrections import History, Version
from meterline.domain.events.typed import decode_body
from meterline.ports.corrections import Corrected
from meterline.runtime import freshness


class CorrectionIn(msgspec.Struct, forbid_unknown_fields=True):
    source: str
    reason: str
    event: msgspec.Raw = msgspec.Raw(b"")
    """The amended CloudEvent (an amend only)."""


_correction = msgspec.json.Decoder(CorrectionIn)
_raw = msgspec.json.Decoder(msgspec.Raw)


async def _body(call: Call) -> CorrectionIn:
    try:
        body = _correction.decode(await json_bytes(call.request))
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"Invalid correction: {_short(exc)}", code="invalid_correction") from None
    if not body.source:
        raise InvalidInput("Invalid correction: `source` is required", code="invalid_correction")
    return body


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0][:200]


@endpoint(Scope.ADMIN)
async def void_event(call: Call) -> Response:
    body = await _body(call)
    if bytes(body.event).strip(b" \t\r\n") not in (b"", b"null"):
        raise InvalidInput("A void takes no `event`", code="invalid_correction")
    service = call.ctx.catalog.corrections
    done = await call.run(
        service.void, call.namespace, body.source, call.path("event"), reason=body.reason, actor=call.key.id
    )
    return await _answer(call, body.source, done)


@endpoint(Scope.ADMIN)
async def amend_event(call: Call) -> Response:
    body = await _body(call)
    if not bytes(body.event).strip(b" \t\r\n") or bytes(body.event) == b"null":
        raise InvalidInput("An amend needs the amended `event`", code="invalid_correction")
    service = call.ctx.catalog.corrections
    done = await call.run(
        service.amend,
        call.namespace,
        body.source,
        call.path("event"),
        bytes(body.event),
        reason=body.reason,
        actor=call.key.id,
    )
    return await _answer(call, body.source, done)


async def _answer(call: Call, source: str, done: Corrected) -> Response:
    history = await call.run(call.ctx.catalog.corrections.history, call.namespace, source, call.path("event"))
    record = freshness.current()
    if record is not None and done.log_positions is not None:
        record.log_positions = done.log_positions  # Meterline-Log-Positions (scale mode)
    elif record is not None:
        record.ingested = done.position  # Meterline-Ledger-Position: wait for it to read the effect
    return json_response({"correction": done.seq, "action": done.action.value, **history_json(history)}, 201)


@endpoint(Scope.ADMIN)
async def backfill(call: Call) -> Response:
    """``POST /api/v1/backfills``: historical events, e.g. for a period already invoiced. They
    go through ingest (dedupe, meters, ledger) like any event, only without the late-arrival
    window; usage of an invoiced period becomes an adjustment on the next invoice."""
    ctx = call.ctx
    media = call.request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _BATCH_TYPES:
        raise UnsupportedMediaType("Send a JSON array of CloudEvents (application/cloudevents-batch+json)")
    body = await read_body(call.request, ctx.config.server.max_body_bytes)
    limits = dataclasses.replace(ctx.limits, late_window_us=None)
    candidates = decode_body(body, "batch", call.namespace, ctx.clock.now_us(), limits)
    appended = await call.run(lambda: ctx.ledger.append(call.namespace, candidates).result())
    ctx.metrics.observe(appended)
    record = freshness.current()
    if record is not None:
        record.ingested = getattr(appended, "position", None)
    return json_response(outcome_report(appended))


_BATCH_TYPES = ("application/cloudevents-batch+json", "application/json")


@endpoint(Scope.READ)
async def get_event(call: Call) -> Response:
    source = call.request.query_params.get("source")
    if not source:
        raise InvalidInput("`source` is required: an event is known by its source and id", code="invalid_parameter")
    history = await call.run(call.ctx.catalog.corrections.history, call.namespace, source, call.path("event"))
    return json_response(history_json(history))


def history_json(h: History) -> dict[str, object]:
    current = h.current
    return {
        "id": h.event_id,
        "source": h.source,
        "voided": h.voided,
        "event": None if current is None else _event(current),
        "history": [_version(v) for v in h.versions],
    }


def _event(v: Version) -> object:
    assert v.raw is not None
    return _raw.decode(v.raw)


def _version(v: Version) -> dict[str, object]:
    out: dict[str, object] = {
        "seq": v.seq,
        "action": "ingest" if v.action is None else v.action.value,
        "receivedAt": rfc3339(v.received_us),
        "type": v.type,
        "subject": v.subject,
        "time": rfc3339(v.time_us),
    }
    if v.action is not None:
        out["reason"] = v.reason
        out["actor"] = v.actor
    if v.raw is not None:
        out["event"] = _event(v)
    return out
