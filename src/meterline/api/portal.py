"""Customer portal: tokens (admin) and the meter query a token holder may run."""

from __future__ import annotations

import dataclasses

import msgspec
from starlette.responses import Response

from meterline.api.endpoint import Call, PortalCall, endpoint, portal_endpoint
from meterline.api.http import json_response, parse_int, typed_body
from meterline.api.meter_query import limits_of, query_from_params, run_query
from meterline.api.meters import render
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339, to_us
from meterline.domain.entitlements.render import present
from meterline.domain.errors import Forbidden, InvalidInput
from meterline.domain.meters.query import SUBJECT


class TokenInput(msgspec.Struct, frozen=True, rename="camel"):
    subject: str
    allowed_meter_slugs: list[str] | None = None
    expires_in: int | None = None  # seconds; meterline's addition


class InvalidateInput(msgspec.Struct, frozen=True):
    id: str | None = None
    subject: str | None = None


@endpoint(Scope.ADMIN)
async def create_token(call: Call) -> Response:
    inp = await typed_body(call.request, TokenInput, "portal token")
    service = call.ctx.catalog.portal
    token, claims = await call.run(service.issue, call.namespace, inp.subject, inp.allowed_meter_slugs, inp.expires_in)
    body = {
        "id": claims.token_id,
        "subject": claims.subject,
        "token": token,
        "expiresAt": rfc3339(to_us(claims.expires_at)),
        "createdAt": rfc3339(to_us(claims.issued_at)),
        "expired": False,
    }
    # every meter: allowedMeterSlugs absent (not null), as OpenMeter answers it
    return json_response(present(body, allowedMeterSlugs=None if claims.meters is None else list(claims.meters)))


@endpoint(Scope.ADMIN)
async def list_tokens(call: Call) -> Response:
    limit = parse_int("limit", call.request.query_params.get("limit"), 25, 1, 1000)
    now = call.ctx.clock.now_us()
    tokens = await call.run(call.ctx.catalog.portal.list, call.namespace, limit)
    return json_response(
        [
            present(
                {
                    "id": t.id,
                    "subject": t.subject,
                    "createdAt": rfc3339(t.created_us),
                    "expiresAt": rfc3339(t.expires_us),
                    "expired": t.expires_us <= now,
                },
                allowedMeterSlugs=t.meters,
            )
            for t in tokens
        ]
    )


@endpoint(Scope.ADMIN)
async def invalidate_tokens(call: Call) -> Response:
    inp = await typed_body(call.request, InvalidateInput, "invalidate request")
    await call.run(call.ctx.catalog.portal.invalidate, call.namespace, inp.id, inp.subject)
    return Response(status_code=204)


@portal_endpoint
async def portal_query(call: PortalCall) -> Response:
    """The token's subject's usage of one meter, split by subject, as OpenMeter answers it: the
    query is the meter query with its subjects forced to the token's subject (a ``subject``
    parameter cannot widen it) and ``subject`` among the group-by keys."""
    ctx, claims, request = call.ctx, call.claims, call.request
    slug = request.path_params["meter"]
    if not claims.allows_meter(slug):
        raise Forbidden(f"this portal token may not read meter {slug!r}", code="meter_not_allowed")
    items = [(k, v) for k, v in request.query_params.multi_items() if k not in ("subject", "filterCustomerId")]
    query = query_from_params(items, limits_of(ctx.config))
    if any(f[0] == SUBJECT for f in query.filters):
        raise InvalidInput("a portal query cannot filter by subject", code="invalid_query")
    own = dataclasses.replace(
        query, subjects=(claims.subject,), group_by=tuple(dict.fromkeys((*query.group_by, SUBJECT)))
    )
    accept = request.headers.get("accept", "")

    def work() -> Response:
        meter, rows = ctx.catalog.usage.query(claims.namespace, slug, own)
        return render(accept, own, meter, rows)

    return await run_query(request, work)
