"""Features (``/api/v1/features``) and grants (``/api/v1/grants`` and per entitlement)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from meterline.api.context import Context
from meterline.api.http import json_response, parse_bool, parse_time, time_text, typed_body
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.entitlements.model import FeatureInput, Grant, GrantInput
from meterline.domain.entitlements.render import feature_body


def grant_json(g: Grant) -> dict[str, Any]:
    s = g.spec
    return {
        "id": g.id,
        "entitlementId": g.entitlement_id,
        "amount": s.amount,
        "priority": s.priority,
        "effectiveAt": rfc3339(g.effective_us),
        "expiration": s.expiration,
        "expiresAt": time_text(g.expires_us),
        "maxRolloverAmount": s.max_rollover_amount,
        "minRolloverAmount": s.min_rollover_amount,
        "metadata": s.metadata,
        "recurrence": None if s.recurrence is None else {"interval": s.recurrence.interval},
        "createdAt": rfc3339(g.created_us),
        "updatedAt": rfc3339(g.created_us),
        "voidedAt": time_text(g.voided_us),
    }


async def create_feature(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, FeatureInput, "feature")
    feature = await run_in_threadpool(ctx.backend.entitlements.create_feature, key.namespace, inp)
    return json_response(feature_body(feature), 201)


async def list_features(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    archived = parse_bool("includeArchived", request.query_params.get("includeArchived"))
    features = await run_in_threadpool(ctx.backend.entitlements.features, key.namespace, include_archived=archived)
    meter = request.query_params.getlist("meterSlug")
    return json_response([feature_body(f) for f in features if not meter or f.spec.meter_slug in meter])


async def get_feature(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    feature = await run_in_threadpool(ctx.backend.entitlements.feature, key.namespace, request.path_params["feature"])
    return json_response(feature_body(feature))


async def delete_feature(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    await run_in_threadpool(ctx.backend.entitlements.archive_feature, key.namespace, request.path_params["feature"])
    return Response(status_code=204)


async def create_grant(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, GrantInput, "grant")
    ent = await run_in_threadpool(_entitlement, ctx, key.namespace, request)
    grant = await run_in_threadpool(ctx.backend.entitlements.create_grant, key.namespace, ent, inp)
    return json_response(grant_json(grant), 201)


async def list_entitlement_grants(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    ent = await run_in_threadpool(_entitlement, ctx, key.namespace, request)
    voided = parse_bool("includeDeleted", request.query_params.get("includeDeleted"))
    grants = await run_in_threadpool(ctx.backend.entitlements.grants, key.namespace, ent.id, include_voided=voided)
    return json_response([grant_json(g) for g in grants])


async def list_grants(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    voided = parse_bool("includeDeleted", request.query_params.get("includeDeleted"))
    grants = await run_in_threadpool(ctx.backend.entitlements.grants, key.namespace, include_voided=voided)
    return json_response([grant_json(g) for g in grants])


async def void_grant(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    at = parse_time("at", request.query_params.get("at"))
    await run_in_threadpool(ctx.backend.entitlements.void_grant, key.namespace, request.path_params["grant"], at)
    return Response(status_code=204)


def _entitlement(ctx: Context, namespace: str, request: Request) -> Any:
    customer = ctx.backend.customers.get(namespace, request.path_params["subject"])
    return ctx.backend.entitlements.find(namespace, customer.id, request.path_params["entitlement"])
