"""Entitlements: OpenMeter's subject-keyed paths, our customer-keyed paths, values, history,
reset, and the fast check ``POST /api/v1/entitlements/check``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from starlette.responses import Response

from meterline.api.context import Context
from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_bool, parse_time, typed_body
from meterline.api.listing import ENTITLEMENT_ORDER, listed
from meterline.api.meter_query import run_query
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.entitlements.credit import Segment
from meterline.domain.entitlements.history import WindowUsage
from meterline.domain.entitlements.model import Entitlement, EntitlementInput
from meterline.domain.entitlements.render import entitlement_body, value_body
from meterline.domain.entitlements.value import Value


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
    preserve_overage: bool | None = None


def entitlement_json(ctx: Context, e: Entitlement) -> dict[str, Any]:
    return entitlement_body(e, ctx.catalog.values.current_period(e))


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
    return listed(call.request, [entitlement_json(call.ctx, e) for e in ents], *ENTITLEMENT_ORDER)


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
    at = parse_time("time", call.request.query_params.get("time"))
    service, owner, ent = call.ctx.catalog.values, _owner(call), call.path("entitlement")
    return json_response(value_body(await call.run(service.value, call.namespace, owner, ent, at)))


@endpoint(Scope.READ)
async def check(call: Call) -> Response:
    """Would these quantities be allowed now? Answers from the live counters (in memory: no
    thread-pool hop)."""
    req = await typed_body(call.request, CheckRequest, "check request")
    features = [(f.feature, f.quantity) for f in req.features]
    result = call.ctx.catalog.values.check(call.namespace, req.customer or req.subject, features)
    return json_response(
        {
            "customer": result.customer,
            "allowed": result.allowed,
            "features": [_check_json(f.feature, f.entitlement, f.allowed, f.denial, f.value) for f in result.features],
        }
    )


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
    q = call.request.query_params
    start, end = parse_time("from", q.get("from")), parse_time("to", q.get("to"))
    size, tz = q.get("windowSize") or "HOUR", q.get("windowTimeZone") or "UTC"
    service, owner, ent = call.ctx.catalog.values, _owner(call), call.path("entitlement")

    def work() -> Response:
        return json_response(_history_json(*service.history(call.namespace, owner, ent, start, end, size, tz)))

    return await run_query(call.request, work)


def _history_json(windows: list[WindowUsage], segments: list[Segment]) -> dict[str, Any]:
    history: list[dict[str, Any]] = [
        {
            "period": {"from": rfc3339(w.start), "to": rfc3339(w.end)},
            "usage": w.usage,
            "balanceAtStart": w.balance_at_start,
        }
        for w in windows
    ]
    return {"windowedHistory": history, "burndownHistory": [_segment_json(s) for s in segments]}


def _segment_json(s: Segment) -> dict[str, Any]:
    """One segment of the credit engine's burndown, in OpenMeter's ``GrantBurnDownHistorySegment``
    shape (plus ``overageAtStart``)."""
    return {
        "period": {"from": rfc3339(s.start_us), "to": rfc3339(s.end_us)},
        "usage": s.usage,
        "overage": s.overage,
        "overageAtStart": s.overage_at_start,
        "balanceAtStart": s.balance_at_start,
        "grantBalancesAtStart": s.balances_at_start,
        "balanceAtEnd": s.balance_at_end,
        "grantBalancesAtEnd": s.balances_at_end,
        "grantUsages": [{"grantId": g, "usage": u} for g, u in s.usages],
    }


@endpoint(Scope.ADMIN)
async def reset_entitlement(call: Call) -> Response:
    inp = await typed_body(call.request, ResetInput, "reset")
    at = parse_time("effectiveAt", inp.effective_at)
    service, owner, ent = call.ctx.catalog.values, _owner(call), call.path("entitlement")
    await call.run(service.reset, call.namespace, owner, ent, at, inp.retain_anchor, inp.preserve_overage)
    return Response(status_code=204)
