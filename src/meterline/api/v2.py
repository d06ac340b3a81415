"""OpenMeter's ``/api/v2`` paths: customer entitlements and grants, entitlement and grant lists,
and the cursor-paged events list.

They reuse the v1 handlers where the wire shape is the same (an entitlement's value, history,
reset; the ``{customer}`` path takes a key or an id). Where v2 differs, this module maps it:
lists are pages (``{totalCount, page, pageSize, items}``; events: ``{items, nextCursor}``), a
metered entitlement's ``issue: {amount, priority}`` is ``issueAfterReset`` and
``issueAfterResetPriority``, its ``grants`` are created with it, and a grant without
``expiration`` never expires (its ``expiration`` is kept as the longest one, 100 years, for
validation; its ``expiresAt`` is null and it burns after the grants that expire).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from starlette.responses import Response
from starlette.routing import Route

from meterline.api import entitlements, features
from meterline.api.endpoint import Call, endpoint
from meterline.api.http import decode_json, json_bytes, json_response, parse_bool, typed_body
from meterline.api.listing import ENTITLEMENT_ORDER, GRANT_ORDER, paged
from meterline.api.v2_events import list_events_v2
from meterline.domain.auth.keys import Scope
from meterline.domain.entitlements.model import EntitlementInput, GrantInput, validate_grant
from meterline.domain.errors import InvalidInput

FOREVER = {"duration": "YEAR", "count": 100}

"""The expiration of a v2 grant sent without one: the longest meterline allows."""


class Issue(msgspec.Struct, frozen=True):
    amount: Decimal
    priority: int = 1


class GrantV2(msgspec.Struct, frozen=True, rename="camel"):
    """OpenMeter's v2 grant input, where ``expiration`` is optional."""

    amount: Decimal
    effective_at: Any
    expiration: dict[str, Any] | None = None
    priority: int = 0
    max_rollover_amount: Decimal | None = None
    """OpenMeter's v2 default: the grant's amount (v1's is 0)."""
    min_rollover_amount: Decimal = Decimal(0)
    metadata: dict[str, str] | None = None
    recurrence: Any = None


class EntitlementV2Extras(msgspec.Struct, frozen=True):
    """The members of a v2 entitlement body that v1 spells differently or lacks."""

    issue: Issue | None = None
    grants: list[GrantV2] | None = None


def _grant_input(g: GrantV2) -> GrantInput:
    """A v2 grant as the v1 grant input, decoded as v1 decodes one (so times are checked alike)."""
    members = msgspec.to_builtins(g)
    members["expiration"] = g.expiration or FOREVER
    if g.max_rollover_amount is None:
        members["maxRolloverAmount"] = g.amount
    return decode_json(msgspec.json.encode(members), GrantInput, "grant")


@endpoint(Scope.ADMIN)
async def create_entitlement(call: Call) -> Response:
    return await _create(call, replace=False)


@endpoint(Scope.ADMIN)
async def override_entitlement(call: Call) -> Response:
    return await _create(call, replace=True)


async def _create(call: Call, *, replace: bool) -> Response:
    body = await json_bytes(call.request)
    inp = decode_json(body, EntitlementInput, "entitlement")
    extras = decode_json(body, EntitlementV2Extras, "entitlement")
    if extras.issue is not None:
        if inp.issue_after_reset is not None:
            raise InvalidInput("send issue or issueAfterReset, not both", code="invalid_entitlement")
        inp = msgspec.structs.replace(
            inp, issue_after_reset=extras.issue.amount, issue_after_reset_priority=extras.issue.priority
        )
    if replace and not (inp.feature_key or inp.feature_id):
        inp = msgspec.structs.replace(inp, feature_key=call.path("entitlement"))
    grants = [_grant_input(g) for g in extras.grants or ()]
    if grants and inp.type != "metered":
        raise InvalidInput("only a metered entitlement takes grants", code="invalid_entitlement")
    for grant in grants:  # every grant is checked before anything is stored
        validate_grant(grant)
    owner, service = call.path("customer"), call.ctx.catalog
    ent = await call.run(service.entitlements.create, call.namespace, owner, inp, replace=replace)
    for sent, grant in zip(extras.grants or (), grants, strict=True):
        await call.run(service.features.grant, call.namespace, owner, ent.id, grant, expires=bool(sent.expiration))
    return json_response(entitlements.entitlement_json(call.ctx, ent), 201)


@endpoint(Scope.READ)
async def list_customer_entitlements(call: Call) -> Response:
    deleted = parse_bool("includeDeleted", call.request.query_params.get("includeDeleted"))
    service = call.ctx.catalog.entitlements
    ents = await call.run(service.of_customer, call.namespace, call.path("customer"), include_deleted=deleted)
    return paged(call.request, [entitlements.entitlement_json(call.ctx, e) for e in ents], *ENTITLEMENT_ORDER)


@endpoint(Scope.READ)
async def list_entitlements(call: Call) -> Response:
    """``feature``, ``customerKeys``, ``customerIds`` and ``entitlementType`` filters."""
    q = call.request.query_params
    service = call.ctx.catalog.entitlements
    ents = await call.run(service.list, call.namespace, features=q.getlist("feature"))
    keys, ids, types = set(q.getlist("customerKeys")), set(q.getlist("customerIds")), set(q.getlist("entitlementType"))
    if types - {"metered", "boolean", "static"}:
        raise InvalidInput("entitlementType must be metered, boolean or static", code="invalid_query")
    kept = [
        e
        for e in ents
        if (not keys or e.customer_key in keys)
        and (not ids or e.customer_id in ids)
        and (not types or e.spec.type in types)
    ]
    return paged(call.request, [entitlements.entitlement_json(call.ctx, e) for e in kept], *ENTITLEMENT_ORDER)


@endpoint(Scope.ADMIN)
async def create_grant(call: Call) -> Response:
    sent = await typed_body(call.request, GrantV2, "grant")
    inp = _grant_input(sent)
    service = call.ctx.catalog.features
    owner, ent = call.path("customer"), call.path("entitlement")
    grant = await call.run(service.grant, call.namespace, owner, ent, inp, expires=bool(sent.expiration))
    return json_response(features.grant_v2_json(grant), 201)


@endpoint(Scope.READ)
async def list_entitlement_grants(call: Call) -> Response:
    service, owner, ent = call.ctx.catalog.features, call.path("customer"), call.path("entitlement")
    voided = parse_bool("includeDeleted", call.request.query_params.get("includeDeleted"))
    grants = await call.run(service.grants_of, call.namespace, owner, ent, include_voided=voided)
    return paged(call.request, [features.grant_v2_json(g) for g in grants], *GRANT_ORDER)


@endpoint(Scope.READ)
async def list_grants(call: Call) -> Response:
    """``feature`` (key or id) and ``customer`` (key or id) filters."""
    q = call.request.query_params
    grants = await features.filtered_grants(call, set(q.getlist("feature")), set(q.getlist("customer")))
    return paged(call.request, [features.grant_v2_json(g) for g in grants], *GRANT_ORDER)


CUSTOMER = "/api/v2/customers/{customer}/entitlements"
ENTITLEMENT = CUSTOMER + "/{entitlement}"
ROUTES = [
    Route(CUSTOMER, create_entitlement, methods=["POST"]),
    Route(CUSTOMER, list_customer_entitlements, methods=["GET"]),
    Route(ENTITLEMENT, entitlements.get_entitlement, methods=["GET"]),
    Route(ENTITLEMENT, entitlements.delete_entitlement, methods=["DELETE"]),
    Route(ENTITLEMENT + "/value", entitlements.entitlement_value, methods=["GET"]),
    Route(ENTITLEMENT + "/history", entitlements.entitlement_history, methods=["GET"]),
    Route(ENTITLEMENT + "/reset", entitlements.reset_entitlement, methods=["POST"]),
    Route(ENTITLEMENT + "/override", override_entitlement, methods=["PUT"]),
    Route(ENTITLEMENT + "/grants", create_grant, methods=["POST"]),
    Route(ENTITLEMENT + "/grants", list_entitlement_grants, methods=["GET"]),
    Route("/api/v2/entitlements", list_entitlements, methods=["GET"]),
    Route("/api/v2/entitlements/{entitlement}", entitlements.get_entitlement_by_id, methods=["GET"]),
    Route("/api/v2/grants", list_grants, methods=["GET"]),
    Route("/api/v2/events", list_events_v2, methods=["GET"]),
]
