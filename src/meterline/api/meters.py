"""Meters: ``/api/v1/meters`` (OpenMeter-shaped) and meter queries, JSON or CSV."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import msgspec
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_body, json_response, typed_body
from meterline.api.listing import LIST_CAP
from meterline.api.members import tree_problem
from meterline.api.meter_query import QueryBody, limits_of, query_from_body, query_from_params, run_query
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
        "description": spec.description,
        "aggregation": spec.aggregation.value,
        "eventType": spec.event_type,
        "valueProperty": spec.value_property,
        "groupBy": spec.group_by,
        "createdAt": rfc3339(m.created_us),
        "updatedAt": rfc3339(m.updated_us or m.created_us),
    }
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


@endpoint(Scope.READ)
async def list_meters(call: Call) -> Response:
    meters = await call.run(call.ctx.catalog.meters.list, call.namespace)
    return json_response([meter_json(m) for m in meters[:LIST_CAP]])  # OpenMeter answers at most 1000


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
        query = query_from_body(await typed_body(request, QueryBody, "query"), limits)
    else:
        query = query_from_params(request.query_params.multi_items(), limits)
    accept, slug = request.headers.get("accept", ""), call.path("meter")

    def work() -> Response:
        meter, rows = call.ctx.catalog.usage.query(call.namespace, slug, query)
        return render(accept, query, meter, rows)

    return await run_query(request, work)


def render(accept: str, query: MeterQuery, meter: Meter, rows: list[Row]) -> Response:
    """The answer as CSV (when ``accept`` asks for it) or JSON."""
    if "text/csv" in accept:
        return Response(rows_csv(meter, rows), media_type="text/csv; charset=utf-8")
    return json_response(result_json(query, rows))


class RowOut(msgspec.Struct, rename="camel"):
    """One row of a query answer as sent (a Struct encodes with a fraction of a dict's memory)."""

    value: Decimal
    window_start: str
    window_end: str
    subject: str | None
    group_by: dict[str, str | None]


def result_json(query: MeterQuery, rows: list[Row]) -> dict[str, Any]:
    data = [RowOut(r.value, rfc3339(r.window_start_us), rfc3339(r.window_end_us), r.subject, r.group_by) for r in rows]
    body: dict[str, Any] = {"data": data}
    if query.start is not None:
        body["from"] = rfc3339(query.start * 1_000_000 if query.start_us is None else query.start_us)
    if query.end is not None:
        body["to"] = rfc3339(query.end * 1_000_000 if query.end_us is None else query.end_us)
    if query.window_size is not None:
        body["windowSize"] = query.window_size.value
    return body


def rows_csv(meter: Meter, rows: list[Row]) -> str:
    dims = sorted({k for r in rows for k in r.group_by})
    out = io.StringIO()
    writer = csvsafe.writer(out)
    writer.writerow(["window_start", "window_end", "subject", *dims, "value"])
    for r in rows:
        writer.writerow(
            [
                rfc3339(r.window_start_us),
                rfc3339(r.window_end_us),
                r.subject or "",
                *[r.group_by.get(d) or "" for d in dims],
                canonical(r.value),
            ]
        )
    return out.getvalue()
