"""Notification channels, rules and events (``/api/v1/notification/...``), OpenMeter-shaped."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import (
    decode_json,
    json_bytes,
    json_response,
    optional_body,
    parse_bool,
    parse_int,
    parse_time,
    time_text,
    typed_body,
)
from meterline.api.listing import ordered
from meterline.domain.alerts.rules import RuleInput, refuse_openmeter_only
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.entitlements.render import present
from meterline.domain.notify.channels import Channel, ChannelInput, masked_url
from meterline.domain.redact import MASK
from meterline.ports.notifications import Delivery, EventFilter
from meterline.services.notifications import EventView, RuleView


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
        "format": s.format,
        "createdAt": rfc3339(c.created_us),
        "updatedAt": rfc3339(c.updated_us),
    }
    body = present(body, customHeaders=s.custom_headers if admin else _masked_headers(s.custom_headers))
    if secret:
        body["signingSecret"] = s.signing_secret
    return body


def _masked_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    return None if headers is None else dict.fromkeys(headers, MASK)


def rule_json(view: RuleView) -> dict[str, Any]:
    r, s = view.rule, view.rule.spec
    sent: dict[str, Any] = msgspec.to_builtins(s, builtin_types=(Decimal,))  # numbers stay JSON numbers
    # members not set are absent rather than null, as OpenMeter answers them
    body = {k: v for k, v in sent.items() if k != "features" and v is not None} | {
        "id": r.id,
        "channels": [{"id": c, "type": view.channel_types.get(c)} for c in s.channels],
        "createdAt": rfc3339(r.created_us),
        "updatedAt": rfc3339(r.updated_us),
    }
    # every feature: `features` absent, as OpenMeter answers it (at least one item when present)
    return present(body, features=[{"id": i, "key": k} for i, k in view.features] or None)


def event_json(view: EventView) -> dict[str, Any]:
    e, kinds = view.event, view.channel_types
    payload = msgspec.json.decode(e.payload)
    return {
        "id": e.id,
        "type": payload.get("type"),
        "createdAt": rfc3339(e.created_us),
        "rule": rule_json(view.rule),
        "threshold": e.threshold.partition("#")[0],  # a repeat's place in its series stays internal
        "periodStart": rfc3339(e.period_start_us),
        "deliveryStatus": [_delivery(d, kinds) for d in e.deliveries],
        "payload": msgspec.Raw(e.payload),
    }


def _delivery(d: Delivery, kinds: dict[str, str | None]) -> dict[str, Any]:
    """One channel's delivery; members not set (``nextAttempt``, a response's ``statusCode`` and
    ``durationMs``) are absent, as OpenMeter answers them."""
    body = {
        "state": d.state,
        "reason": d.log[-1].error or "" if d.log else "",
        "updatedAt": rfc3339(d.updated_us),
        "channel": {"id": d.channel, "type": kinds.get(d.channel)},
        "attempts": [
            {
                "state": a.state,
                "timestamp": rfc3339(a.at_us),
                "response": present({"body": a.error or ""}, statusCode=a.status_code, durationMs=a.duration_ms),
            }
            for a in d.log
        ],
    }
    return present(body, nextAttempt=time_text(d.next_attempt_us))


ORDER_BY = ("id", "type", "createdAt", "updatedAt")
"""OpenMeter's ``orderBy`` values for channels and rules (without one: by id, as stored)."""


def _page(call: Call, items: list[Any]) -> dict[str, Any]:
    """OpenMeter's page shape over the whole list (``page`` from 1, ``pageSize`` default 100),
    in OpenMeter's ``orderBy``/``order``."""
    page, size = _paging(call)
    items = ordered(call.request, items, ORDER_BY)
    return {"totalCount": len(items), "page": page, "pageSize": size, "items": items[(page - 1) * size : page * size]}


def _paging(call: Call) -> tuple[int, int]:
    q = call.request.query_params
    return parse_int("page", q.get("page"), 1, 1, 10**6), parse_int("pageSize", q.get("pageSize"), 100, 1, 1000)


@endpoint(Scope.ADMIN)
async def create_channel(call: Call) -> Response:
    inp = await typed_body(call.request, ChannelInput, "channel")
    channel = await call.run(call.ctx.catalog.notifications.create_channel, call.namespace, inp)
    return json_response(channel_json(channel, admin=True, secret=True), 201)


@endpoint(Scope.ADMIN)
async def update_channel(call: Call) -> Response:
    inp = await typed_body(call.request, ChannelInput, "channel")
    service = call.ctx.catalog.notifications
    channel = await call.run(service.update_channel, call.namespace, call.path("channel"), inp)
    return json_response(channel_json(channel, admin=True))


@endpoint(Scope.ADMIN)
async def rotate_channel_secret(call: Call) -> Response:
    """Replace a webhook channel's signing secret (generated unless the body gives one); the
    answer is the one other place, besides creation, that shows it."""
    inp = await optional_body(call.request, RotateInput, "rotation request", RotateInput(), limit=64 * 1024)
    service = call.ctx.catalog.notifications
    channel = await call.run(service.rotate_secret, call.namespace, call.path("channel"), inp.signing_secret)
    return json_response(channel_json(channel, admin=True, secret=True))


@endpoint(Scope.READ)
async def list_channels(call: Call) -> Response:
    deleted = parse_bool("includeDeleted", call.request.query_params.get("includeDeleted"))
    channels = await call.run(call.ctx.catalog.notifications.channels, call.namespace, include_deleted=deleted)
    admin = call.key.allows(Scope.ADMIN)
    return json_response(_page(call, [channel_json(c, admin=admin) for c in channels]))


@endpoint(Scope.READ)
async def get_channel(call: Call) -> Response:
    channel = await call.run(call.ctx.catalog.notifications.channel, call.namespace, call.path("channel"))
    return json_response(channel_json(channel, admin=call.key.allows(Scope.ADMIN)))


@endpoint(Scope.ADMIN)
async def delete_channel(call: Call) -> Response:
    await call.run(call.ctx.catalog.notifications.delete_channel, call.namespace, call.path("channel"))
    return Response(status_code=204)


@endpoint(Scope.ADMIN)
async def create_rule(call: Call) -> Response:
    inp = await _rule_input(call)
    view = await call.run(call.ctx.catalog.notifications.create_rule, call.namespace, inp)
    return json_response(rule_json(view), 201)


@endpoint(Scope.ADMIN)
async def update_rule(call: Call) -> Response:
    inp = await _rule_input(call)
    view = await call.run(call.ctx.catalog.notifications.update_rule, call.namespace, call.path("rule"), inp)
    return json_response(rule_json(view))


async def _rule_input(call: Call) -> RuleInput:
    body = await json_bytes(call.request)
    refuse_openmeter_only(body)
    return decode_json(body, RuleInput, "rule")


@endpoint(Scope.READ)
async def list_rules(call: Call) -> Response:
    views = await call.run(call.ctx.catalog.notifications.rules, call.namespace)
    return json_response(_page(call, [rule_json(v) for v in views]))


@endpoint(Scope.READ)
async def get_rule(call: Call) -> Response:
    view = await call.run(call.ctx.catalog.notifications.rule, call.namespace, call.path("rule"))
    return json_response(rule_json(view))


@endpoint(Scope.ADMIN)
async def delete_rule(call: Call) -> Response:
    await call.run(call.ctx.catalog.notifications.delete_rule, call.namespace, call.path("rule"))
    return Response(status_code=204)


@endpoint(Scope.ADMIN)
async def test_rule(call: Call) -> Response:
    """Fire a test event for a rule through its channels (a fresh event every call)."""
    view = await call.run(call.ctx.catalog.notifications.test, call.namespace, call.path("rule"))
    return json_response(event_json(view), 201)


@endpoint(Scope.READ)
async def list_events(call: Call) -> Response:
    q = call.request.query_params
    page, size = _paging(call)
    f = EventFilter(
        start_us=parse_time("from", q.get("from")),
        end_us=parse_time("to", q.get("to")),
        rules=tuple(q.getlist("rule")),
        customers=tuple(q.getlist("subject") + q.getlist("customer")),
        features=tuple(q.getlist("feature")),
    )
    service = call.ctx.catalog.notifications
    total, views = await call.run(service.events, call.namespace, f, limit=size, offset=(page - 1) * size)
    return json_response({"totalCount": total, "page": page, "pageSize": size, "items": [event_json(v) for v in views]})


@endpoint(Scope.READ)
async def get_event(call: Call) -> Response:
    view = await call.run(call.ctx.catalog.notifications.event, call.namespace, call.path("event"))
    return json_response(event_json(view))


@endpoint(Scope.ADMIN)
async def resend_event(call: Call) -> Response:
    inp = await typed_body(call.request, ResendInput, "resend request")
    await call.run(call.ctx.catalog.notifications.resend, call.namespace, call.path("event"), inp.channels)
    return Response(status_code=202)
