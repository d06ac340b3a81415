"""Meters: ``/api/v1/meters`` (OpenMeter-shaped) and meter queries, JSON or CSV."""

from __future__ import annotations

import dataclasses
import io
from decimal import Decimal
from typing import Any

import msgspec
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_body, json_response, typed_body
from meterline.api.listing import LIST_CAP
from meterline.api.members import tree_problem
from meterline.api.meter_query import (
    CustomerScope,
    QueryBody,
    limits_of,
    query_from_body,
    run_query,
    scoped_query_from_params,
)
from meterline.domain import csvsafe
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.decimals import canonical
from meterline.domain.errors import InvalidInput
from meterline.domain.meters.model import Meter, MeterSpec, MeterUpdate, parse_spec
from meterline.domain.meters.query import MeterQuery, Row


def meter_json(m: Meter) -> dict[str, Any]:
    spec = m.spec
    body: dict[str, Any] = {
        "id": m.id,
        "slug": spec.slug,
        "name": spec.name or spec.slug,
        "aggregation": spec.aggregation.value,
        "eventType": spec.event_type,
        "groupBy": spec.group_by,
        "createdAt": rfc3339(m.created_us),
        "updatedAt": rfc3339(m.updated_us or m.created_us),
    }
    # absent rather than null when not set, as OpenMeter answers them (its schema has no null)
    if spec.description is not None:
        body["description"] = spec.description
    if spec.value_property is not None:
        body["valueProperty"] = spec.value_property
    if spec.metadata is not None:
        body["metadata"] = spec.metadata
    if spec.event_from is not None:
        body["eventFrom"] = spec.event_from.isoformat().replace("+00:00", "Z")
    return body


@endpoint(Scope.ADMIN)
async def create_meter(call: Call) -> Response:
    body = await json_body(call.request)
    problem = tree_problem(body, MeterSpec)
    if problem is not None:
        raise InvalidInput(f"Invalid meter definition: {problem}", code="invalid_meter", problems=[problem])
    meter = await call.run(call.ctx.catalog.meters.create, call.namespace, parse_spec(body))
    response = json_response(meter_json(meter), 201)
    start = call.ctx.raw_events_from()
    if start:  # retention removed older raw events: the backfill cannot count them
        response.headers["Meterline-Raw-Events-From"] = rfc3339(start)
    return response


METER_ORDER = {"key": "slug", "name": "name", "aggregation": "aggregation", "createdAt": "createdAt",
               "updatedAt": "updatedAt"}  # fmt: skip
"""OpenMeter's ``orderBy`` values for meters and the member each sorts by (default ``key``)."""


@endpoint(Scope.READ)
async def list_meters(call: Call) -> Response:
    """As OpenMeter lists meters: ordered by ``orderBy`` (default ``key``), ``order`` ``ASC``
    (default) or ``DESC``, the first 1000 (it takes ``page`` and ``pageSize`` but does not page)."""
    q = call.request.query_params
    by, order = q.get("orderBy") or "key", (q.get("order") or "ASC").upper()
    if by not in METER_ORDER:
        raise InvalidInput(f"orderBy must be one of {', '.join(METER_ORDER)}", code="invalid_query")
    if order not in ("ASC", "DESC"):
        raise InvalidInput("order must be ASC or DESC", code="invalid_query")
    meters = await call.run(call.ctx.catalog.meters.list, call.namespace)
    items = sorted((meter_json(m) for m in meters), key=lambda m: (m[METER_ORDER[by]], m["slug"]))
    if order == "DESC":
        items.reverse()
    return json_response(items[:LIST_CAP])


@endpoint(Scope.READ)
async def get_meter(call: Call) -> Response:
    meter = await call.run(call.ctx.catalog.meters.get, call.namespace, call.path("meter"))
    return json_response(meter_json(meter))


@endpoint(Scope.ADMIN)
async def update_meter(call: Call) -> Response:
    update = await typed_body(call.request, MeterUpdate, "meter update")
    meter = await call.run(call.ctx.catalog.meters.update, call.namespace, call.path("meter"), update)
    return json_response(meter_json(meter))


@endpoint(Scope.ADMIN)
async def delete_meter(call: Call) -> Response:
    await call.run(call.ctx.catalog.meters.delete, call.namespace, call.path("meter"))
    return Response(status_code=204)


@endpoint(Scope.READ)
async def query_meter(call: Call) -> Response:
    request, limits = call.request, limits_of(call.ctx.config)
    if request.method == "POST":
        query, scope = query_from_body(await typed_body(request, QueryBody, "query"), limits)
    else:
        query, scope = scoped_query_from_params(request.query_params.multi_items(), limits)
    accept, slug = request.headers.get("accept", ""), call.path("meter")

    def work() -> Response:
        if not scope.customers:
            meter, rows = call.ctx.catalog.usage.query(call.namespace, slug, query)
            return render(accept, query, meter, rows)
        meter, owned = customer_rows(call, slug, query, scope)
        return render(accept, query, meter, [r for r, _ in owned], [c for _, c in owned])

    return await run_query(request, work)


def customer_rows(
    call: Call, slug: str, query: MeterQuery, scope: CustomerScope
) -> tuple[Meter, list[tuple[Row, str]]]:
    """OpenMeter's ``filterCustomerId``: each customer's usage (the events of its key and its
    subject keys, and of the ``subject`` filter's among them when one is given) as its own rows,
    in window order. An unknown customer is a 404, as in OpenMeter."""
    customers = [call.ctx.catalog.customers.get(call.namespace, c) for c in scope.customers]
    meter = call.ctx.catalog.meters.get(call.namespace, slug)
    owned: list[tuple[Row, str]] = []
    for customer in customers:
        subjects = customer.usage_subjects
        if query.subjects:
            subjects = tuple(s for s in query.subjects if s in subjects)
        if not subjects:  # none of the filtered subjects is the customer's: no usage
            continue
        own = dataclasses.replace(query, subjects=subjects, combine_subjects=not query.subjects)
        meter, rows = call.ctx.catalog.usage.query(call.namespace, slug, own)
        owned += [(r, customer.id) for r in rows]
    owned.sort(key=lambda pair: pair[0].window_start_us)  # stable: customers in the order asked
    return meter, owned


def render(
    accept: str, query: MeterQuery, meter: Meter, rows: list[Row], customers: list[str] | None = None
) -> Response:
    """The answer as CSV (when ``accept`` asks for it) or JSON; ``customers`` is the customer
    id of each row when the query was scoped by ``filterCustomerId``."""
    if "text/csv" in accept:
        return Response(rows_csv(meter, rows, customers), media_type="text/csv; charset=utf-8")
    return json_response(result_json(query, rows, customers))


class RowOut(msgspec.Struct, rename="camel", omit_defaults=True):
    """One row of a query answer as sent (a Struct encodes with a fraction of a dict's memory)."""

    value: Decimal
    window_start: str
    window_end: str
    subject: str | None
    group_by: dict[str, str | None]
    customer_id: str | None = None


def result_json(query: MeterQuery, rows: list[Row], customers: list[str] | None = None) -> dict[str, Any]:
    owners: list[str | None] = [*customers] if customers is not None else [None] * len(rows)
    data = [
        RowOut(r.value, rfc3339(r.window_start_us), rfc3339(r.window_end_us), r.subject, r.group_by, c)
        for r, c in zip(rows, owners, strict=True)
    ]
    body: dict[str, Any] = {"data": data}
    if query.start is not None:
        body["from"] = rfc3339(query.start * 1_000_000 if query.start_us is None else query.start_us)
    if query.end is not None:
        body["to"] = rfc3339(query.end * 1_000_000 if query.end_us is None else query.end_us)
    if query.window_size is not None:
        body["windowSize"] = query.window_size.value
    return body


def rows_csv(meter: Meter, rows: list[Row], customers: list[str] | None = None) -> str:
    dims = sorted({k for r in rows for k in r.group_by})
    out = io.StringIO()
    writer = csvsafe.writer(out)
    owner = ["customer_id"] if customers is not None else []
    writer.writerow(["window_start", "window_end", "subject", *owner, *dims, "value"])
    for i, r in enumerate(rows):
        writer.writerow(
            [
                rfc3339(r.window_start_us),
                rfc3339(r.window_end_us),
                r.subject or "",
                *([] if customers is None else [customers[i]]),
                *[r.group_by.get(d) or "" for d in dims],
                canonical(r.value),
            ]
        )
    return out.getvalue()
