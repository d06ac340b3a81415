"""Customers (``/api/v1/customers``), OpenMeter subjects (``/api/v1/subjects``), the namespace
settings (``/api/v1/settings``) and the quarantine (``/api/v1/quarantine``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_int, typed_body
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.customers.model import CustomerInput, UnknownSubjects
from meterline.domain.customers.render import customer_body, subject_body
from meterline.ports.customers import Saved


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


@endpoint(Scope.ADMIN)
async def create_customer(call: Call) -> Response:
    inp = await typed_body(call.request, CustomerInput, "customer")
    saved = await call.run(call.ctx.catalog.customers.create, call.namespace, inp)
    return json_response(_saved(saved), 201)


@endpoint(Scope.ADMIN)
async def replace_customer(call: Call) -> Response:
    inp = await typed_body(call.request, CustomerInput, "customer")
    saved = await call.run(call.ctx.catalog.customers.replace, call.namespace, call.path("customer"), inp)
    return json_response(_saved(saved))


@endpoint(Scope.READ)
async def list_customers(call: Call) -> Response:
    customers = await call.run(call.ctx.catalog.customers.list, call.namespace)
    return json_response([customer_body(c) for c in customers])


@endpoint(Scope.READ)
async def get_customer(call: Call) -> Response:
    customer = await call.run(call.ctx.catalog.customers.get, call.namespace, call.path("customer"))
    return json_response(customer_body(customer))


@endpoint(Scope.ADMIN)
async def delete_customer(call: Call) -> Response:
    await call.run(call.ctx.catalog.customers.delete, call.namespace, call.path("customer"))
    return Response(status_code=204)


# -- OpenMeter subjects: a subject is a customer whose key is the subject key ------------------


@endpoint(Scope.ADMIN)
async def upsert_subjects(call: Call) -> Response:
    items = await typed_body(call.request, SubjectUpserts, "subject")
    inputs = [CustomerInput(item.key, item.display_name, None, "UTC", item.metadata) for item in items]
    saved = await call.run(call.ctx.catalog.customers.upsert_many, call.namespace, inputs)
    return json_response([subject_body(s.customer) for s in saved])


@endpoint(Scope.READ)
async def list_subjects(call: Call) -> Response:
    customers = await call.run(call.ctx.catalog.customers.list, call.namespace)
    return json_response([subject_body(c) for c in customers])


@endpoint(Scope.READ)
async def get_subject(call: Call) -> Response:
    customer = await call.run(call.ctx.catalog.customers.get, call.namespace, call.path("subject"))
    return json_response(subject_body(customer))


@endpoint(Scope.ADMIN)
async def delete_subject(call: Call) -> Response:
    await call.run(call.ctx.catalog.customers.delete, call.namespace, call.path("subject"))
    return Response(status_code=204)


# -- settings and quarantine ------------------------------------------------------------------


@endpoint(Scope.READ)
async def get_settings(call: Call) -> Response:
    policy = await call.run(call.ctx.catalog.customers.policy, call.namespace)
    return json_response({"unknownSubjects": policy.value})


@endpoint(Scope.ADMIN)
async def put_settings(call: Call) -> Response:
    settings = await typed_body(call.request, Settings, "settings")
    await call.run(call.ctx.catalog.customers.set_policy, call.namespace, settings.unknown_subjects)
    return json_response({"unknownSubjects": settings.unknown_subjects.value})


@endpoint(Scope.READ)
async def list_quarantine(call: Call) -> Response:
    q = call.request.query_params
    limit = parse_int("limit", q.get("limit"), 100, 1, 1000)
    after = parse_int("after", q.get("after"), 0, 0, 2**62)
    items = await call.run(
        call.ctx.catalog.customers.quarantined, call.namespace, q.get("subject"), limit=limit, after_id=after
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
