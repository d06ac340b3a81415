"""Features (``/api/v1/features``) and grants (``/api/v1/grants`` and per entitlement)."""

from __future__ import annotations

from typing import Any

from dateutil.relativedelta import relativedelta
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_bool, parse_time, time_text, typed_body
from meterline.api.listing import FEATURE_ORDER, GRANT_ORDER, LIST_CAP, listed
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import from_us, rfc3339, to_us
from meterline.domain.entitlements.model import FeatureInput, Grant, GrantInput
from meterline.domain.entitlements.render import feature_body, interval_iso, present
from meterline.domain.entitlements.rules import DEFAULT_GRANT, is_default_grant
from meterline.domain.periods import parse_interval

NEVER = {"duration": "YEAR", "count": 100}
"""The expiration OpenMeter's v1 paths show for a grant that never expires (its v1 shape
requires one); the v2 paths show none."""


def grant_json(g: Grant) -> dict[str, Any]:
    """A grant in OpenMeter's v1 shape: one that never expires shows an expiration of 100 years
    and ``expiresAt`` 100 years after ``effectiveAt``, as OpenMeter's v1 shows it."""
    body = grant_v2_json(g)
    if g.expires_us is None:
        body |= {"expiration": NEVER, "expiresAt": _century_after(g.effective_us)}
    return body


def _century_after(us: int) -> str:
    try:
        return rfc3339(to_us(from_us(us) + relativedelta(years=100)))
    except (OverflowError, ValueError):  # past the year 9999
        return "9999-12-31T23:59:59.999Z"


def grant_v2_json(g: Grant) -> dict[str, Any]:
    """A grant in OpenMeter's v2 shape: ``expiration`` and ``expiresAt`` absent when it never
    expires, as are ``metadata``, ``recurrence`` and ``voidedAt`` when not set (OpenMeter's
    schema has no null for them)."""
    s = g.spec
    marked = {"annotations": {DEFAULT_GRANT: True}} if is_default_grant(g) else {}  # OpenMeter's annotation
    body = marked | {
        "id": g.id,
        "entitlementId": g.entitlement_id,
        "amount": s.amount,
        "priority": s.priority,
        "effectiveAt": rfc3339(g.effective_us),
        "maxRolloverAmount": s.max_rollover_amount,
        "minRolloverAmount": s.min_rollover_amount,
        "createdAt": rfc3339(g.created_us),
        "updatedAt": rfc3339(g.created_us),
    }
    return present(
        body,
        expiration=None if g.expires_us is None else s.expiration,
        expiresAt=time_text(g.expires_us),
        metadata=s.metadata,
        recurrence=None if s.recurrence is None else _recurrence(g),
        voidedAt=time_text(g.voided_us),
    )


def _recurrence(g: Grant) -> dict[str, Any]:
    """OpenMeter's shape: the interval (also as ISO 8601) and the anchor (default: the grant's
    effectiveAt)."""
    assert g.spec.recurrence is not None
    anchor = g.spec.recurrence.anchor
    interval = g.spec.recurrence.interval
    return {
        "interval": interval,
        "intervalISO": interval_iso(parse_interval(interval)),
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
    """``feature`` (key or id) and ``subject`` (the entitlement's subject key) filters."""
    q = call.request.query_params
    grants = await filtered_grants(call, set(q.getlist("feature")), set(q.getlist("subject")))
    return listed(call.request, [grant_json(g) for g in grants], *GRANT_ORDER)


async def filtered_grants(call: Call, wanted_features: set[str], wanted_owners: set[str]) -> list[Grant]:
    """The namespace's grants (voided ones with ``includeDeleted``) of entitlements to one of
    ``wanted_features`` (keys or ids) and of one of ``wanted_owners`` (customer keys or ids);
    an empty set does not filter."""
    voided = parse_bool("includeDeleted", call.request.query_params.get("includeDeleted"))
    catalog = call.ctx.catalog
    grants = await call.run(catalog.features.grants, call.namespace, include_voided=voided)
    if not (wanted_features or wanted_owners):
        return grants
    ents = {e.id: e for e in await call.run(catalog.entitlements.list, call.namespace)}
    return [
        g
        for g in grants
        if (e := ents.get(g.entitlement_id)) is not None
        and (not wanted_features or {e.feature_key, e.feature_id} & wanted_features)
        and (not wanted_owners or {e.customer_key, e.customer_id} & wanted_owners)
    ]


@endpoint(Scope.ADMIN)
async def void_grant(call: Call) -> Response:
    at = parse_time("at", call.request.query_params.get("at"))
    await call.run(call.ctx.catalog.features.void_grant, call.namespace, call.path("grant"), at)
    return Response(status_code=204)
