"""Corrections of accepted events (``/api/v1/events/{eventId}``): void, amend, history.

Corrections need an ``admin`` key: they change what was counted and billed. The key's id is
recorded as the actor of each correction.
"""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_bytes, json_response
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.errors import InvalidInput
from meterline.domain.events.corrections import History, Version
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
    if record is not None:
        record.ingested = done.position  # Meterline-Ledger-Position: wait for it to read the effect
    return json_response({"correction": done.seq, "action": done.action.value, **history_json(history)}, 201)


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
