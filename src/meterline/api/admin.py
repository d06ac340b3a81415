"""Dead letters (``/api/v1/dead-letters``) and API keys (``/api/v1/keys``)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from meterline.adapters.sqlite.dead_letters import DeadLetterFilter
from meterline.adapters.sqlite.keys import create_key, list_keys, revoke_key
from meterline.api.context import Context
from meterline.api.http import json_response, parse_int, parse_time, typed_body
from meterline.domain.auth.keys import ApiKey, Scope, check_namespace, parse_scopes
from meterline.domain.clock import rfc3339
from meterline.domain.errors import InvalidInput
from meterline.domain.events.model import Reason
from meterline.domain.nesting import MAX_DEPTH, too_deep

REASONS = tuple(reason.value for reason in Reason)


def _filter(request: Request) -> DeadLetterFilter:
    q = request.query_params
    reason = q.get("reason")
    if reason is not None and reason not in REASONS:
        raise InvalidInput(f"`reason` must be one of {', '.join(REASONS)}", code="invalid_parameter")
    return DeadLetterFilter(
        reason=reason,
        source=q.get("source"),
        start_us=parse_time("from", q.get("from")),
        end_us=parse_time("to", q.get("to")),
    )


async def list_dead_letters(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    q = request.query_params
    limit = parse_int("limit", q.get("limit"), 100, 1, 1000)
    after = parse_int("after", q.get("after"), 0, 0, 2**62)
    items = await run_in_threadpool(
        ctx.backend.dead_letters.list, key.namespace, _filter(request), limit=limit, after_id=after
    )
    return json_response(
        {
            "items": [
                {
                    "id": d.id,
                    "receivedAt": rfc3339(d.received_us),
                    "reason": d.reason,
                    "message": d.message,
                    "source": d.source,
                    "eventId": d.event_id,
                    "event": _raw(d.raw),
                }
                for d in items
            ],
            "next": items[-1].id if len(items) == limit else None,
        }
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


async def purge_dead_letters(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    purged = await run_in_threadpool(ctx.backend.dead_letters.purge, key.namespace, _filter(request))
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


async def create_api_key(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    caller = ctx.auth.require(request, Scope.ADMIN)
    body = await typed_body(request, KeyInput, "key request")
    scopes = parse_scopes(body.scopes)
    name = body.name or "api key"
    namespace = caller.namespace
    if body.namespace not in (msgspec.UNSET, caller.namespace):
        raise InvalidInput("A key can only create keys in its own namespace", code="invalid_namespace")
    check_namespace(namespace)
    now = ctx.clock.now_us()
    new, secret = await run_in_threadpool(
        ctx.backend.db.writer.call, lambda conn: create_key(conn, namespace, name, scopes, now)
    )
    return json_response({**key_json(new), "key": secret}, 201)


async def list_api_keys(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    caller = ctx.auth.require(request, Scope.ADMIN)
    keys = await run_in_threadpool(list_keys, ctx.backend.db.reader(), caller.namespace)
    return json_response([key_json(k) for k in keys])


async def revoke_api_key(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    caller = ctx.auth.require(request, Scope.ADMIN)
    key_id, now = request.path_params["key"], ctx.clock.now_us()
    await run_in_threadpool(ctx.backend.db.writer.call, lambda conn: revoke_key(conn, key_id, caller.namespace, now))
    return Response(status_code=204)
