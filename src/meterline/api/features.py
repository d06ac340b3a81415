"""Features (``/api/v1/features``) and grants (``/api/v1/grants`` and per entitlement)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_bool, parse_time, time_text, typed_body
from meterline.api.listing import FEATURE_ORDER, GRANT_ORDER, LIST_CAP, listed
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339, to_us
from meterline.domain.entitlements.model import FeatureInput, Grant, GrantInput
from meterline.domain.entitlements.render import feature_body
from meterline.domain.entitlements.rules import DEFAULT_GRANT, is_default_grant


def grant_json(g: Grant) -> dict[str, Any]:
    s = g.spec
    marked = {"annotations": {DEFAULT_GRANT: True}} if is_default_grant(g) else {}  # OpenMeter's annotation
    return marked | {
        "id": g.id,
        "entitlementId": g.entitlement_id,
        "amount": s.amount,
        "priority": s.priority,
        "effectiveAt": rfc3339(g.effective_us),
        "expiration": None if g.expires_us is None else s.expiration,
        "expiresAt": time_text(g.expires_us),
        "maxRolloverAmount": s.max_rollover_amount,
        "minRolloverAmount": s.min_rollover_amount,
        "metadata": s.metadata,
        "recurrence": None if s.recurrence is None else _recurrence(g),
        "createdAt": rfc3339(g.created_us),
        "updatedAt": rfc3339(g.created_us),
        "voidedAt": time_text(g.voided_us),
    }


def _recurrence(g: Grant) -> dict[str, Any]:
    """OpenMeter's shape: the interval and the anchor (default: the grant's effectiveAt)."""
    assert g.spec.recurrence is not None
    anchor = g.spec.recurrence.anchor
    return {
        "interval": g.spec.recurrence.interval,
        "anchor": rfc3339(g.effective_us if anchor is None else to_us(anchor)),
    }


@endpoint(Scope.ADMIN)
async def create_feature(call: Call) -> Response:
    inp = await typed_body(call.request, FeatureInput, "feature")
    feature = await call.run(call.ctx.catalog.features.create, call.namespace, inp)
    return json_response(feature_body(feature), 201)


@endpoint(Scope.READ)
async def list_features(call: Call) -> Response:
    q = call.request.query_params
    archived = parse_bool("includeArchived", q.get("includeArchived"))
    service = call.ctx.catalog.features
    features = await call.run(service.list, call.namespace, include_archived=archived, meters=q.getlist("meterSlug"))
    return listed(call.request, [feature_body(f) for f in features], *FEATURE_ORDER)


@endpoint(Scope.READ)
async def get_feature(call: Call) -> Response:
    feature = await call.run(call.ctx.catalog.features.get, call.namespace, call.path("feature"))
    return json_response(feature_body(feature))


@endpoint(Scope.ADMIN)
async def delete_feature(call: Call) -> Response:
    await call.run(call.ctx.catalog.features.archive, call.namespace, call.path("feature"))
    return Response(status_code=204)


@endpoint(Scope.ADMIN)
async def create_grant(call: Call) -> Response:
    inp = await typed_body(call.request, GrantInput, "grant")
    service = call.ctx.catalog.features
    grant = await call.run(service.grant, call.namespace, call.path("subject"), call.path("entitlement"), inp)
    return json_response(grant_json(grant), 201)


@endpoint(Scope.READ)
async def list_entitlement_grants(call: Call) -> Response:
    service, owner, ent = call.ctx.catalog.features, call.path("subject"), call.path("entitlement")
    voided = parse_bool("includeDeleted", call.request.query_params.get("includeDeleted"))
    grants = await call.run(service.grants_of, call.namespace, owner, ent, include_voided=voided)
    # OpenMeter answers an entitlement's grants as one array of at most 1000 (no paging there)
    return listed(call.request, [grant_json(g) for g in grants], *GRANT_ORDER, limit=LIST_CAP)


@endpoint(Scope.READ)
async def list_grants(call: Call) -> Response:
    voided = parse_bool("includeDeleted", call.request.query_params.get("includeDeleted"))
    grants = await call.run(call.ctx.catalog.features.grants, call.namespace, include_voided=voided)
    return listed(call.request, [grant_json(g) for g in grants], *GRANT_ORDER)


@endpoint(Scope.ADMIN)
async def void_grant(call: Call) -> Response:
    at = parse_time("at", call.request.query_params.get("at"))
    await call.run(call.ctx.catalog.features.void_grant, call.namespace, call.path("grant"), at)
    return Response(status_code=204)
