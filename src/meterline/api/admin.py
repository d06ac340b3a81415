"""Dead letters (``/api/v1/dead-letters``) and API keys (``/api/v1/keys``)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_int, parse_time, typed_body
from meterline.domain.auth.keys import ApiKey, Scope, parse_scopes
from meterline.domain.clock import rfc3339
from meterline.domain.errors import InvalidInput
from meterline.domain.events.model import Status
from meterline.domain.nesting import MAX_DEPTH, too_deep
from meterline.ports.dead_letters import DeadLetter, DeadLetterFilter
from meterline.runtime import freshness

_STATES: dict[str, bool | None] = {"pending": False, "resubmitted": True, "all": None}


def _filter(call: Call) -> DeadLetterFilter:
    q = call.request.query_params
    state = q.get("state", "pending")
    if state not in _STATES:
        raise InvalidInput("`state` must be pending, resubmitted or all", code="invalid_parameter")
    return DeadLetterFilter(
        reason=q.get("reason"),
        source=q.get("source"),
        start_us=parse_time("from", q.get("from")),
        end_us=parse_time("to", q.get("to")),
        resubmitted=_STATES[state],
    )


@endpoint(Scope.READ)
async def list_dead_letters(call: Call) -> Response:
    q = call.request.query_params
    limit = parse_int("limit", q.get("limit"), 100, 1, 1000)
    after = parse_int("after", q.get("after"), 0, 0, 2**62)
    items = await call.run(
        call.ctx.catalog.dead_letters.list, call.namespace, _filter(call), limit=limit, after_id=after
    )
    return json_response({"items": [_letter(d) for d in items], "next": items[-1].id if len(items) == limit else None})


def _letter(d: DeadLetter) -> dict[str, object]:
    out: dict[str, object] = {
        "id": d.id,
        "receivedAt": rfc3339(d.received_us),
        "reason": d.reason,
        "message": d.message,
        "source": d.source,
        "eventId": d.event_id,
        "event": _raw(d.raw),
    }
    if d.resubmitted_us is not None:
        out["resubmittedAt"] = rfc3339(d.resubmitted_us)
        out["resubmittedAs"] = d.resubmitted_status
    return out


class ResubmitIn(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[Annotated[int, msgspec.Meta(ge=1, le=2**62)]]


@endpoint(Scope.ADMIN)
async def resubmit_dead_letters(call: Call) -> Response:
    """``POST /api/v1/dead-letters/resubmit``: each chosen dead letter through ingest again, once."""
    body = await typed_body(call.request, ResubmitIn, "resubmission")
    service = call.ctx.catalog.resubmission
    report = await call.run(service.resubmit, call.namespace, tuple(body.ids), actor=call.key.id)
    call.ctx.metrics.observe([o for _, o in report.outcomes])
    record = freshness.current()
    if record is not None:
        record.ingested = report.position
    items = []
    for id_, o in report.outcomes:
        item: dict[str, object] = {"id": id_, "eventId": o.id, "source": o.source, "status": o.status.value}
        if o.reason is not None:
            item["reason"], item["message"] = o.reason.value, o.message
        items.append(item)
    counts = report.counts
    return json_response(
        {
            "resubmitted": len(report.outcomes),
            **{k: counts.get(s.value, 0) for k, s in _COUNTED},
            "alreadyResubmitted": list(report.already),
            "notFound": list(report.not_found),
            "items": items,
        }
    )


_COUNTED = (
    ("accepted", Status.ACCEPTED),
    ("duplicates", Status.DUPLICATE),
    ("rejected", Status.REJECTED),
    ("quarantined", Status.QUARANTINED),
)


def _raw(raw: bytes) -> object:
    """The event as sent: JSON where it parses, else its text (never parsed past MAX_DEPTH)."""
    try:
        if not too_deep(raw, MAX_DEPTH + 1):
            msgspec.json.decode(raw)
            return msgspec.Raw(raw)
    except (msgspec.DecodeError, RecursionError):
        pass
    return raw.decode("utf-8", "replace")


@endpoint(Scope.ADMIN)
async def purge_dead_letters(call: Call) -> Response:
    purged = await call.run(call.ctx.catalog.dead_letters.purge, call.namespace, _filter(call))
    return json_response({"purged": purged})


def key_json(k: ApiKey) -> dict[str, object]:
    return {
        "id": k.id,
        "name": k.name,
        "namespace": k.namespace,
        "scopes": sorted(s.value for s in k.scopes),
        "prefix": k.prefix,
        "createdAt": rfc3339(k.created_us),
        "revokedAt": None if k.revoked_us is None else rfc3339(k.revoked_us),
    }


class KeyInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /api/v1/keys``. A key is always created in the caller's own namespace."""

    scopes: list[str] = []
    name: Annotated[str, msgspec.Meta(max_length=256)] = ""
    namespace: str | msgspec.UnsetType = msgspec.UNSET


@endpoint(Scope.ADMIN)
async def create_api_key(call: Call) -> Response:
    body = await typed_body(call.request, KeyInput, "key request")
    scopes = parse_scopes(body.scopes)
    if body.namespace not in (msgspec.UNSET, call.namespace):
        raise InvalidInput("A key can only create keys in its own namespace", code="invalid_namespace")
    new, secret = await call.run(call.ctx.catalog.keys.create, call.namespace, body.name or "api key", scopes)
    return json_response({**key_json(new), "key": secret}, 201)


@endpoint(Scope.ADMIN)
async def list_api_keys(call: Call) -> Response:
    keys = await call.run(call.ctx.catalog.keys.list, call.namespace)
    return json_response([key_json(k) for k in keys])


@endpoint(Scope.ADMIN)
async def revoke_api_key(call: Call) -> Response:
    await call.run(call.ctx.catalog.keys.revoke, call.path("key"), call.namespace)
    return Response(status_code=204)
