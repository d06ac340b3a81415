"""Entitlements: OpenMeter's subject-keyed paths, our customer-keyed paths, values, history,
reset, and the fast check ``POST /api/v1/entitlements/check``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from starlette.responses import Response

from meterline.adapters.sqlite.counters import Live
from meterline.api.context import Context
from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_bool, parse_time, typed_body
from meterline.api.meter_query import limits_of, run_query
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.entitlements.model import Entitlement, EntitlementInput
from meterline.domain.entitlements.render import entitlement_body, period_body, value_body
from meterline.domain.entitlements.value import Value, verdict
from meterline.domain.errors import InvalidInput, NotFound
from meterline.domain.meters.query import MeterQuery
from meterline.domain.meters.windows import WindowSize, zone
from meterline.domain.periods import Period


class CheckFeature(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    feature: str
    quantity: Decimal = Decimal(0)


class CheckRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    features: list[CheckFeature]
    customer: str | None = None
    subject: str | None = None


class ResetInput(msgspec.Struct, frozen=True, rename="camel"):
    effective_at: str | None = None
    retain_anchor: bool = False
    preserve_overage: bool = False


def entitlement_json(ctx: Context, e: Entitlement) -> dict[str, Any]:
    live = ctx.history.live(e.id) if e.spec.type == "metered" else None
    return entitlement_body(e, None if live is None else live.period_at(ctx.clock.now_us()))


def _owner(call: Call) -> str:
    """The customer a path names: ``{subject}`` (OpenMeter's paths) or ``{customer}``."""
    return call.request.path_params.get("subject") or call.path("customer")


# -- create / list / get / delete ------------------------------------------------------------


@endpoint(Scope.ADMIN)
async def create_entitlement(call: Call) -> Response:
    return await _create(call, replace=False)


@endpoint(Scope.ADMIN)
async def override_entitlement(call: Call) -> Response:
    return await _create(call, replace=True)


async def _create(call: Call, *, replace: bool) -> Response:
    inp = await typed_body(call.request, EntitlementInput, "entitlement")
    if replace and not (inp.feature_key or inp.feature_id):
        inp = msgspec.structs.replace(inp, feature_key=call.path("entitlement"))
    ent = await call.run(call.ctx.catalog.entitlements.create, call.namespace, _owner(call), inp, replace=replace)
    return json_response(entitlement_json(call.ctx, ent), 201)


@endpoint(Scope.READ)
async def list_customer_entitlements(call: Call) -> Response:
    deleted = parse_bool("includeDeleted", call.request.query_params.get("includeDeleted"))
    service = call.ctx.catalog.entitlements
    ents = await call.run(service.of_customer, call.namespace, _owner(call), include_deleted=deleted)
    return json_response([entitlement_json(call.ctx, e) for e in ents])


@endpoint(Scope.READ)
async def list_entitlements(call: Call) -> Response:
    q = call.request.query_params
    service = call.ctx.catalog.entitlements
    ents = await call.run(service.list, call.namespace, features=q.getlist("feature"), customers=q.getlist("subject"))
    return json_response([entitlement_json(call.ctx, e) for e in ents])


@endpoint(Scope.READ)
async def get_entitlement_by_id(call: Call) -> Response:
    ent = await call.run(call.ctx.catalog.entitlements.get, call.namespace, call.path("entitlement"))
    return json_response(entitlement_json(call.ctx, ent))


@endpoint(Scope.READ)
async def get_entitlement(call: Call) -> Response:
    return json_response(entitlement_json(call.ctx, await _find(call)))


@endpoint(Scope.ADMIN)
async def delete_entitlement(call: Call) -> Response:
    await call.run(call.ctx.catalog.entitlements.delete, call.namespace, _owner(call), call.path("entitlement"))
    return Response(status_code=204)


async def _find(call: Call) -> Entitlement:
    return await call.run(call.ctx.catalog.entitlements.find, call.namespace, _owner(call), call.path("entitlement"))


# -- value, check, history, reset -------------------------------------------------------------


@endpoint(Scope.READ)
async def entitlement_value(call: Call) -> Response:
    ctx = call.ctx
    at = parse_time("time", call.request.query_params.get("time"))
    ent = await _find(call)
    if at is not None and ent.spec.type == "metered":
        live = ctx.history.live(ent.id)
        if live is None:
            raise NotFound("the entitlement's meter no longer exists", code="meter_not_found")
        return json_response(value_body(await call.run(ctx.history.value_at, live, at)))
    _, value = await call.run(ctx.backend.counters.value, call.namespace, ent.customer_key, ent.feature_key)
    assert value is not None
    return json_response(value_body(value))


@endpoint(Scope.READ)
async def check(call: Call) -> Response:
    """Would these quantities be allowed now? Answers from the live counters."""
    req = await typed_body(call.request, CheckRequest, "check request")
    counters, namespace = call.ctx.backend.counters, call.namespace
    name = req.customer or req.subject
    if name is None or not req.features:
        raise InvalidInput("send `customer` (or `subject`) and at least one feature", code="invalid_check_request")
    customer = counters.customer_key(namespace, name)
    if customer is None:
        raise NotFound(f"no customer {name!r}", code="customer_not_found")
    results, allowed = [], True
    for f in req.features:
        ent, value = counters.value(namespace, customer, f.feature, project=False)
        v = verdict(ent, value, f.quantity)
        allowed = allowed and v.allowed
        results.append(_check_json(f.feature, ent, v.allowed, v.denial, value))
    return json_response({"customer": customer, "allowed": allowed, "features": results})


def _check_json(feature: str, ent: Entitlement | None, ok: bool, denial: str | None, v: Value | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "feature": feature,
        "type": None if ent is None else ent.spec.type,
        "allowed": ok,
        "hasAccess": False if v is None else v.has_access,
        "denial": denial,
    }
    if ent is not None and v is not None and v.usage is not None:
        assert v.period is not None
        body |= {
            "usage": v.usage,
            "limit": v.allowance,
            "balance": v.balance,
            "overage": v.overage,
            "softLimit": ent.spec.soft_limit,
            "softLimitExceeded": v.soft_limit_exceeded,
            "periodStart": rfc3339(v.period.start_us),
            "periodEnd": rfc3339(v.period.end_us),
        }
    if v is not None and v.config is not None:
        body["config"] = v.config
    return body


@endpoint(Scope.READ)
async def entitlement_history(call: Call) -> Response:
    ctx, q = call.ctx, call.request.query_params
    start, end = parse_time("from", q.get("from")), parse_time("to", q.get("to"))
    size = q.get("windowSize") or "HOUR"
    if size not in ("MINUTE", "HOUR", "DAY", "MONTH"):
        raise InvalidInput("windowSize must be MINUTE, HOUR, DAY or MONTH", code="invalid_window_size")
    ent = await _find(call)
    live = ctx.history.live(ent.id)
    if live is None:
        raise InvalidInput("history exists for metered entitlements only", code="invalid_entitlement")
    now = ctx.clock.now_us()
    end = end or now - now % 60_000_000 + 60_000_000  # through the current minute
    start = start or live.period_at(now).start_us
    tz = zone(q.get("windowTimeZone") or "UTC")
    query = MeterQuery(
        start // 1_000_000, -(-end // 60_000_000) * 60, WindowSize(size), tz, limits=limits_of(ctx.config)
    )
    return await run_query(call.request, lambda: json_response(_history(ctx, ent, live, query)))


def _history(ctx: Context, ent: Entitlement, live: Live, query: MeterQuery) -> dict[str, Any]:
    windows = ctx.history.windows(live, query)
    history: list[dict[str, Any]] = []
    segments: dict[Period, tuple[Decimal, Decimal]] = {}
    used, current = Decimal(0), None
    for w_start, w_end, usage in windows:
        period = live.period_at(w_start * 1_000_000)
        if period != current:
            current, used = period, Decimal(0)
        allowance = ent.spec.issue_after_reset or Decimal(0)
        history.append(
            {
                "period": {"from": rfc3339(w_start * 1_000_000), "to": rfc3339(w_end * 1_000_000)},
                "usage": usage,
                "balanceAtStart": max(allowance - used, Decimal(0)),
            }
        )
        used += usage
        segments[period] = (allowance, used)
    burndown: list[dict[str, Any]] = [
        {
            "period": period_body(p),
            "usage": u,
            "overage": max(u - a, Decimal(0)),
            "balanceAtStart": a,
            "balanceAtEnd": max(a - u, Decimal(0)),
            "grantBalancesAtStart": {},
            "grantBalancesAtEnd": {},
            "grantUsages": [],
        }
        for p, (a, u) in segments.items()
    ]
    return {"windowedHistory": history, "burndownHistory": burndown}


@endpoint(Scope.ADMIN)
async def reset_entitlement(call: Call) -> Response:
    inp = await typed_body(call.request, ResetInput, "reset")
    if inp.preserve_overage:
        raise InvalidInput("preserveOverage is not supported: a reset starts from zero", code="invalid_reset")
    at = parse_time("effectiveAt", inp.effective_at)
    service = call.ctx.catalog.entitlements
    await call.run(service.reset, call.namespace, _owner(call), call.path("entitlement"), at, inp.retain_anchor)
    return Response(status_code=204)
