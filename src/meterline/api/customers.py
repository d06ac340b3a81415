"""Customers (``/api/v1/customers``), OpenMeter subjects (``/api/v1/subjects``), the namespace
settings (``/api/v1/settings``) and the quarantine (``/api/v1/quarantine``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from starlette.responses import Response
from ulid import ULID

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import decode_json, json_bytes, json_response, parse_bool, parse_int, typed_body
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.customers.model import Customer, CustomerInput, UnknownSubjects
from meterline.domain.customers.render import customer_body, subject_body
from meterline.domain.errors import InvalidInput
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


class _Key(msgspec.Struct):
    key: Any = None


async def _customer_input(call: Call) -> tuple[CustomerInput, bool]:
    """The body, and whether it names a key (OpenMeter's key is optional; an empty one is not)."""
    body = await json_bytes(call.request)
    return decode_json(body, CustomerInput, "customer"), decode_json(body, _Key, "customer").key is not None


@endpoint(Scope.ADMIN)
async def create_customer(call: Call) -> Response:
    inp, keyed = await _customer_input(call)
    if not keyed:  # one is generated (lower-case letters and digits)
        inp = msgspec.structs.replace(inp, key=str(ULID()).lower())
    saved = await call.run(call.ctx.catalog.customers.create, call.namespace, inp)
    return json_response(_saved(saved), 201)


@endpoint(Scope.ADMIN)
async def replace_customer(call: Call) -> Response:
    inp, keyed = await _customer_input(call)
    if not keyed:  # OpenMeter's update body may leave the key out: it stays
        current = await call.run(
            call.ctx.catalog.customers.get, call.namespace, call.path("customer"), include_deleted=True
        )
        inp = msgspec.structs.replace(inp, key=current.key)
    saved = await call.run(call.ctx.catalog.customers.replace, call.namespace, call.path("customer"), inp)
    return json_response(_saved(saved))


_ORDER = {"id": lambda c: c.id, "name": lambda c: (c.name or "").lower(), "createdAt": lambda c: c.created_us}


@endpoint(Scope.READ)
async def list_customers(call: Call) -> Response:
    """OpenMeter's page of customers: ``{totalCount, page, pageSize, items}``, filtered by
    ``key``, ``name``, ``primaryEmail`` and ``subject`` (case-insensitive parts) and ordered by
    ``orderBy`` (``id``, ``name``, ``createdAt``; default the key) and ``order``. Deleted
    customers (with ``deletedAt``) only with ``includeDeleted=true``."""
    q = call.request.query_params
    deleted = parse_bool("includeDeleted", q.get("includeDeleted"))
    page = parse_int("page", q.get("page"), 1, 1, 2**31)
    size = parse_int("pageSize", q.get("pageSize"), 100, 1, 1000)
    order_by, order = q.get("orderBy"), (q.get("order") or "ASC").upper()
    if order_by is not None and order_by not in _ORDER:
        raise InvalidInput("orderBy must be id, name or createdAt", code="invalid_query")
    if order not in ("ASC", "DESC"):
        raise InvalidInput("order must be ASC or DESC", code="invalid_query")
    every = await call.run(call.ctx.catalog.customers.list, call.namespace, include_deleted=deleted)
    customers = [c for c in every if _matches(c, q)]
    if order_by is not None:
        customers.sort(key=_ORDER[order_by])
    if order == "DESC":
        customers.reverse()
    items = customers[(page - 1) * size : page * size]
    return json_response(
        {"totalCount": len(customers), "page": page, "pageSize": size, "items": [customer_body(c) for c in items]}
    )


def _matches(c: Customer, q: Any) -> bool:
    email = (c.profile or {}).get("primaryEmail") or ""
    wanted = (
        (q.get("key"), [c.key]),
        (q.get("name"), [c.name or ""]),
        (q.get("primaryEmail"), [email]),
        (q.get("subject"), list(c.subjects)),
    )
    return all(part is None or any(part.lower() in text.lower() for text in texts) for part, texts in wanted)


@endpoint(Scope.READ)
async def get_customer(call: Call) -> Response:
    """A live customer by key or id, or a deleted one (with ``deletedAt``) by its id, as
    OpenMeter answers; a deleted customer's key names no one (404) unless a new customer took it."""
    customer = await call.run(
        call.ctx.catalog.customers.get, call.namespace, call.path("customer"), include_deleted=True
    )
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
