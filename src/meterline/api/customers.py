"""Customers (``/api/v1/customers``), OpenMeter subjects (``/api/v1/subjects``), the namespace
settings (``/api/v1/settings``) and the quarantine (``/api/v1/quarantine``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from meterline.adapters.sqlite.customers import Saved
from meterline.api.context import Context
from meterline.api.http import json_response, parse_int, typed_body
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.customers.model import CustomerInput, UnknownSubjects
from meterline.domain.customers.render import customer_body, subject_body


class SubjectUpsert(msgspec.Struct, frozen=True, rename="camel"):
    key: str
    display_name: str | None = None
    metadata: dict[str, Any] | None = None
    current_period_start: str | None = None
    current_period_end: str | None = None
    stripe_customer_id: str | None = None


MAX_SUBJECTS = 1000
SubjectUpserts = Annotated[list[SubjectUpsert], msgspec.Meta(max_length=MAX_SUBJECTS)]
"""One upsert request: at most this many subjects, committed together (all or none)."""


class Settings(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    unknown_subjects: UnknownSubjects


def _saved(saved: Saved) -> dict[str, Any]:
    body = customer_body(saved.customer)
    body["released"] = {"accepted": saved.released, "rejected": saved.released_rejected}
    return body


async def create_customer(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, CustomerInput, "customer")
    saved = await run_in_threadpool(ctx.backend.customers.create, key.namespace, inp)
    return json_response(_saved(saved), 201)


async def replace_customer(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, CustomerInput, "customer")
    saved = await run_in_threadpool(ctx.backend.customers.replace, key.namespace, request.path_params["customer"], inp)
    return json_response(_saved(saved))


async def list_customers(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    customers = await run_in_threadpool(ctx.backend.customers.list, key.namespace)
    return json_response([customer_body(c) for c in customers])


async def get_customer(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    customer = await run_in_threadpool(ctx.backend.customers.get, key.namespace, request.path_params["customer"])
    return json_response(customer_body(customer))


async def delete_customer(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    await run_in_threadpool(ctx.backend.customers.delete, key.namespace, request.path_params["customer"])
    return Response(status_code=204)


# -- OpenMeter subjects: a subject is a customer whose key is the subject key ------------------


async def upsert_subjects(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    items = await typed_body(request, SubjectUpserts, "subject")
    inputs = [CustomerInput(item.key, item.display_name, None, "UTC", item.metadata) for item in items]
    saved = await run_in_threadpool(ctx.backend.customers.upsert_many, key.namespace, inputs)
    return json_response([subject_body(s.customer) for s in saved])


async def list_subjects(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    customers = await run_in_threadpool(ctx.backend.customers.list, key.namespace)
    return json_response([subject_body(c) for c in customers])


async def get_subject(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    customer = await run_in_threadpool(ctx.backend.customers.get, key.namespace, request.path_params["subject"])
    return json_response(subject_body(customer))


async def delete_subject(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    await run_in_threadpool(ctx.backend.customers.delete, key.namespace, request.path_params["subject"])
    return Response(status_code=204)


# -- settings and quarantine ------------------------------------------------------------------


async def get_settings(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    policy = await run_in_threadpool(ctx.backend.customers.policy, key.namespace)
    return json_response({"unknownSubjects": policy.value})


async def put_settings(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    settings = await typed_body(request, Settings, "settings")
    await run_in_threadpool(ctx.backend.customers.set_policy, key.namespace, settings.unknown_subjects)
    return json_response({"unknownSubjects": settings.unknown_subjects.value})


async def list_quarantine(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    q = request.query_params
    limit = parse_int("limit", q.get("limit"), 100, 1, 1000)
    after = parse_int("after", q.get("after"), 0, 0, 2**62)
    items = await run_in_threadpool(
        ctx.backend.customers.quarantined, key.namespace, q.get("subject"), limit=limit, after_id=after
    )
    return json_response(
        {
            "items": [
                {
                    "id": e.id,
                    "source": e.source,
                    "eventId": e.event_id,
                    "type": e.type,
                    "subject": e.subject,
                    "time": rfc3339(e.time_us),
                    "receivedAt": rfc3339(e.received_us),
                    "event": msgspec.Raw(e.raw),
                }
                for e in items
            ],
            "next": items[-1].id if len(items) == limit else None,
        }
    )
