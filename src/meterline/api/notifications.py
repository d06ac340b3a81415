"""Notification channels, rules and events (``/api/v1/notification/...``), OpenMeter-shaped."""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from ulid import ULID

from meterline.adapters.sqlite.notifications import FiredEvent, insert_event
from meterline.api.context import Context
from meterline.api.http import (
    json_response,
    optional_body,
    parse_bool,
    parse_int,
    parse_time,
    time_text,
    typed_body,
)
from meterline.domain.alerts.rules import Rule, RuleInput
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.errors import NotFound
from meterline.domain.notify.channels import Channel, ChannelInput, masked_url, validate_channel
from meterline.domain.notify.targets import check_url
from meterline.domain.redact import MASK

_encode = msgspec.json.Encoder(decimal_format="number").encode


class ResendInput(msgspec.Struct, frozen=True):
    channels: list[str] | None = None


class RotateInput(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    signing_secret: str | None = None


def channel_json(c: Channel, *, admin: bool, secret: bool = False) -> dict[str, Any]:
    """A channel on the wire. The signing secret is only in the answers that create or rotate it
    (``secret``); a caller without the admin scope sees the URL and custom header values masked,
    since receivers often carry credentials there (a Slack webhook URL is itself a secret)."""
    s = c.spec
    body = {
        "id": c.id,
        "type": s.type,
        "name": s.name,
        "disabled": s.disabled,
        "metadata": s.metadata,
        "url": s.url if admin else masked_url(s.url),
        "customHeaders": s.custom_headers if admin else _masked_headers(s.custom_headers),
        "format": s.format,
        "createdAt": rfc3339(c.created_us),
        "updatedAt": rfc3339(c.updated_us),
    }
    if secret:
        body["signingSecret"] = s.signing_secret
    return body


def _masked_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    return None if headers is None else dict.fromkeys(headers, MASK)


def rule_json(ctx: Context, r: Rule) -> dict[str, Any]:
    s = r.spec
    channels = {c.id: c for c in ctx.backend.notifications.channels(r.namespace, include_deleted=True)}
    body: dict[str, Any] = msgspec.to_builtins(s, builtin_types=(Decimal,))  # numbers stay JSON numbers
    return body | {
        "id": r.id,
        "channels": [{"id": c, "type": channels[c].type if c in channels else None} for c in s.channels],
        "features": [_feature_meta(ctx, r.namespace, f) for f in s.features or []],
        "createdAt": rfc3339(r.created_us),
        "updatedAt": rfc3339(r.updated_us),
    }


def _feature_meta(ctx: Context, namespace: str, id_or_key: str) -> dict[str, str]:
    try:
        f = ctx.catalog.features.get(namespace, id_or_key)
    except NotFound:
        return {"id": id_or_key, "key": id_or_key}
    return {"id": f.id, "key": f.key}


def event_json(ctx: Context, namespace: str, e: FiredEvent) -> dict[str, Any]:
    rule = ctx.backend.notifications.rule(namespace, e.rule)
    kinds = {c.id: c.type for c in ctx.backend.notifications.channels(namespace, include_deleted=True)}
    payload = msgspec.json.decode(e.payload)
    return {
        "id": e.id,
        "type": payload.get("type"),
        "createdAt": rfc3339(e.created_us),
        "rule": rule_json(ctx, rule),
        "threshold": e.threshold,
        "periodStart": rfc3339(e.period_start_us),
        "deliveryStatus": [
            {
                "state": d.state,
                "reason": d.log[-1].error or "" if d.log else "",
                "updatedAt": rfc3339(d.updated_us),
                "channel": {"id": d.channel, "type": kinds.get(d.channel)},
                "nextAttempt": time_text(d.next_attempt_us),
                "attempts": [
                    {
                        "state": a.state,
                        "timestamp": rfc3339(a.at_us),
                        "response": {"statusCode": a.status_code, "body": a.error or "", "durationMs": a.duration_ms},
                    }
                    for a in d.log
                ],
            }
            for d in e.deliveries
        ],
        "payload": msgspec.Raw(e.payload),
    }


def _page(request: Request, items: list[Any]) -> dict[str, Any]:
    """OpenMeter's page shape over the whole list (``page`` from 1, ``pageSize`` default 100)."""
    q = request.query_params
    page = parse_int("page", q.get("page"), 1, 1, 10**6)
    size = parse_int("pageSize", q.get("pageSize"), 100, 1, 1000)
    return {"totalCount": len(items), "page": page, "pageSize": size, "items": items[(page - 1) * size : page * size]}


def _allowed(ctx: Context, inp: ChannelInput) -> ChannelInput:
    """``inp`` if it is a valid channel whose webhook target may be saved (see notify.targets)."""
    validate_channel(inp)
    check_url(inp.url if inp.type == "WEBHOOK" else None, ctx.config.alerts.allow_private_webhook_targets)
    return inp


async def create_channel(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = _allowed(ctx, await typed_body(request, ChannelInput, "channel"))
    channel = await run_in_threadpool(ctx.backend.notifications.create_channel, key.namespace, inp)
    return json_response(channel_json(channel, admin=True, secret=True), 201)


async def update_channel(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = _allowed(ctx, await typed_body(request, ChannelInput, "channel"))
    channel = await run_in_threadpool(
        ctx.backend.notifications.update_channel, key.namespace, request.path_params["channel"], inp
    )
    return json_response(channel_json(channel, admin=True))


async def rotate_channel_secret(request: Request) -> Response:
    """Replace a webhook channel's signing secret (generated unless the body gives one); the
    answer is the one other place, besides creation, that shows it."""
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await _rotate_input(request)
    channel = await run_in_threadpool(
        ctx.backend.notifications.rotate_secret, key.namespace, request.path_params["channel"], inp.signing_secret
    )
    return json_response(channel_json(channel, admin=True, secret=True))


async def _rotate_input(request: Request) -> RotateInput:
    """The optional body of a rotation: none, ``{}`` or ``{"signingSecret": "whsec_..."}``."""
    return await optional_body(request, RotateInput, "rotation request", RotateInput(), limit=64 * 1024)


async def list_channels(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    deleted = parse_bool("includeDeleted", request.query_params.get("includeDeleted"))
    channels = await run_in_threadpool(
        functools.partial(ctx.backend.notifications.channels, key.namespace, include_deleted=deleted)
    )
    admin = key.allows(Scope.ADMIN)
    return json_response(_page(request, [channel_json(c, admin=admin) for c in channels]))


async def get_channel(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    channel = await run_in_threadpool(ctx.backend.notifications.channel, key.namespace, request.path_params["channel"])
    return json_response(channel_json(channel, admin=key.allows(Scope.ADMIN)))


async def delete_channel(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    await run_in_threadpool(ctx.backend.notifications.delete_channel, key.namespace, request.path_params["channel"])
    return Response(status_code=204)


async def create_rule(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, RuleInput, "rule")
    rule = await run_in_threadpool(ctx.backend.notifications.create_rule, key.namespace, inp)
    return json_response(await run_in_threadpool(rule_json, ctx, rule), 201)


async def update_rule(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, RuleInput, "rule")
    rule = await run_in_threadpool(
        ctx.backend.notifications.update_rule, key.namespace, request.path_params["rule"], inp
    )
    return json_response(await run_in_threadpool(rule_json, ctx, rule))


async def list_rules(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    rules = await run_in_threadpool(ctx.backend.notifications.rules, key.namespace)
    return json_response(_page(request, [await run_in_threadpool(rule_json, ctx, r) for r in rules]))


async def get_rule(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    rule = await run_in_threadpool(ctx.backend.notifications.rule, key.namespace, request.path_params["rule"])
    return json_response(await run_in_threadpool(rule_json, ctx, rule))


async def delete_rule(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    await run_in_threadpool(ctx.backend.notifications.delete_rule, key.namespace, request.path_params["rule"])
    return Response(status_code=204)


async def test_rule(request: Request) -> Response:
    """Fire a test event for a rule through its channels (a fresh event every call)."""
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    notifications = ctx.backend.notifications
    rule = await run_in_threadpool(notifications.rule, key.namespace, request.path_params["rule"])
    now = ctx.clock.now_us()

    def payload(event_id: str) -> bytes:
        data = {"kind": "test", "rule": {"id": rule.id, "name": rule.spec.name, "type": rule.spec.type}}
        return _encode({"id": event_id, "type": rule.spec.type, "timestamp": rfc3339(now), "data": data})

    def fire() -> str | None:
        return ctx.backend.db.writer.call(
            lambda conn: insert_event(
                conn, key.namespace, rule, "", "", f"test:{ULID()}", now, payload, now, rule.spec.channels
            )
        )

    event_id = await run_in_threadpool(fire)
    assert event_id is not None
    if ctx.dispatcher is not None:
        ctx.dispatcher.wake()
    event = await run_in_threadpool(notifications.event, key.namespace, event_id)
    return json_response(await run_in_threadpool(event_json, ctx, key.namespace, event), 201)


async def list_events(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    q = request.query_params
    page = parse_int("page", q.get("page"), 1, 1, 10**6)
    size = parse_int("pageSize", q.get("pageSize"), 100, 1, 1000)

    def load() -> dict[str, Any]:
        total, events = ctx.backend.notifications.events(
            key.namespace,
            start_us=parse_time("from", q.get("from")),
            end_us=parse_time("to", q.get("to")),
            rules=q.getlist("rule"),
            customers=q.getlist("subject") + q.getlist("customer"),
            features=q.getlist("feature"),
            limit=size,
            offset=(page - 1) * size,
        )
        items = [event_json(ctx, key.namespace, e) for e in events]
        return {"totalCount": total, "page": page, "pageSize": size, "items": items}

    return json_response(await run_in_threadpool(load))


async def get_event(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)

    def load() -> dict[str, Any]:
        return event_json(
            ctx, key.namespace, ctx.backend.notifications.event(key.namespace, request.path_params["event"])
        )

    return json_response(await run_in_threadpool(load))


async def resend_event(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, ResendInput, "resend request")
    await run_in_threadpool(ctx.backend.notifications.resend, key.namespace, request.path_params["event"], inp.channels)
    if ctx.dispatcher is not None:
        ctx.dispatcher.wake()
    return Response(status_code=202)
