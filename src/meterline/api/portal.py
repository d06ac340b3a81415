"""Customer portal: tokens (admin) and the meter query a token holder may run."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from meterline.api.context import Context
from meterline.api.http import json_response, parse_int, typed_body
from meterline.api.meter_query import limits_of, query_from_params, run_query
from meterline.api.meters import render
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339, to_us
from meterline.domain.errors import Forbidden, InvalidInput, NotFound, PortalTokenInvalid
from meterline.domain.meters.query import SUBJECT


class TokenInput(msgspec.Struct, frozen=True, rename="camel"):
    subject: str
    allowed_meter_slugs: list[str] | None = None
    expires_in: int | None = None  # seconds; meterline's addition


class InvalidateInput(msgspec.Struct, frozen=True):
    id: str | None = None
    subject: str | None = None


async def create_token(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, TokenInput, "portal token")
    longest = int(ctx.config.portal.max_token_ttl.total_seconds())
    if inp.expires_in is not None and not 1 <= inp.expires_in <= longest:
        raise InvalidInput(f"expiresIn must be between 1 and {longest} seconds", code="invalid_ttl")
    ttl = None if inp.expires_in is None else timedelta(seconds=inp.expires_in)
    token, claims = await run_in_threadpool(
        ctx.backend.portal.issue, key.namespace, inp.subject, inp.allowed_meter_slugs, ttl
    )
    return json_response(
        {
            "id": claims.token_id,
            "subject": claims.subject,
            "token": token,
            "allowedMeterSlugs": None if claims.meters is None else list(claims.meters),
            "expiresAt": rfc3339(to_us(claims.expires_at)),
            "createdAt": rfc3339(to_us(claims.issued_at)),
            "expired": False,
        }
    )


async def list_tokens(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    limit = parse_int("limit", request.query_params.get("limit"), 25, 1, 1000)
    now = ctx.clock.now_us()
    rows = await run_in_threadpool(ctx.backend.portal.list, key.namespace, limit)
    return json_response(
        [
            {
                "id": i,
                "subject": s,
                "allowedMeterSlugs": m,
                "createdAt": rfc3339(c),
                "expiresAt": rfc3339(e),
                "expired": e <= now,
            }
            for i, s, m, c, e in rows
        ]
    )


async def invalidate_tokens(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, InvalidateInput, "invalidate request")
    if inp.id is None and inp.subject is None:
        raise InvalidInput("send `id` or `subject`", code="invalid_invalidate_request")
    await run_in_threadpool(ctx.backend.portal.invalidate, key.namespace, inp.id, inp.subject)
    return Response(status_code=204)


async def portal_query(request: Request) -> Response:
    """The token's customer's usage of one meter; subject filters are forced to that customer."""
    ctx: Context = request.app.state.ctx
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise PortalTokenInvalid("send the portal token as 'Authorization: Bearer <token>'", reason="missing")
    claims = await run_in_threadpool(ctx.backend.portal.verify, token.strip())
    slug = request.path_params["meter"]
    if not claims.allows_meter(slug):
        raise Forbidden(f"this portal token may not read meter {slug!r}", code="meter_not_allowed")
    items = [(k, v) for k, v in request.query_params.multi_items() if k not in ("subject", "filterCustomerId")]
    query = query_from_params(items, limits_of(ctx.config))
    if SUBJECT in query.group_by or any(f[0] == SUBJECT for f in query.filters):
        raise InvalidInput("a portal query cannot group or filter by subject", code="invalid_query")

    accept = request.headers.get("accept", "")

    def work() -> Response:
        customer = ctx.backend.customers.by_subject(claims.namespace, claims.subject)
        if customer is None:
            try:
                customer = ctx.backend.customers.get(claims.namespace, claims.subject)
            except NotFound:
                customer = None
        subjects = customer.subjects if customer is not None else (claims.subject,)
        meter = ctx.backend.meters.get(claims.namespace, slug)
        own = dataclasses.replace(query, subjects=tuple(subjects), combine_subjects=True)
        return render(accept, query, meter, ctx.backend.meters.query(meter, own))

    return await run_query(request, work)
