"""Meters: ``/api/v1/meters`` (OpenMeter-shaped) and meter queries, JSON or CSV."""

from __future__ import annotations

import ast
import io
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from meterline import csvsafe
from meterline.api.context import Context
from meterline.api.http import json_body, json_response, parse_time
from meterline.auth.keys import Scope
from meterline.clock import rfc3339
from meterline.decimals import canonical
from meterline.errors import InvalidInput
from meterline.meters.model import Meter, parse_spec
from meterline.meters.query import MeterQuery, Row
from meterline.meters.windows import WindowSize, zone


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
        "updatedAt": rfc3339(m.created_us),
    }
    if spec.metadata is not None:
        body["metadata"] = spec.metadata
    if spec.event_from is not None:
        body["eventFrom"] = spec.event_from.isoformat().replace("+00:00", "Z")
    return body


async def create_meter(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    spec = parse_spec(await json_body(request))
    meter = await run_in_threadpool(ctx.backend.meters.create, key.namespace, spec)
    return json_response(meter_json(meter), 201)


async def list_meters(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    meters = await run_in_threadpool(ctx.backend.meters.list, key.namespace)
    return json_response([meter_json(m) for m in meters])


async def get_meter(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    meter = await run_in_threadpool(ctx.backend.meters.get, key.namespace, request.path_params["meter"])
    return json_response(meter_json(meter))


async def delete_meter(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.ADMIN)
    await run_in_threadpool(ctx.backend.meters.delete, key.namespace, request.path_params["meter"])
    return Response(status_code=204)


async def query_meter(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    if request.method == "POST":
        query = query_from_body(await json_body(request))
    else:
        query = query_from_params(request.query_params.multi_items())
    meter, rows = await run_in_threadpool(_run, ctx, key.namespace, request.path_params["meter"], query)
    if "text/csv" in request.headers.get("accept", ""):
        return Response(rows_csv(meter, rows), media_type="text/csv; charset=utf-8")
    return json_response(result_json(query, rows))


def _run(ctx: Context, namespace: str, slug: str, query: MeterQuery) -> tuple[Meter, list[Row]]:
    meter = ctx.backend.meters.get(namespace, slug)
    return meter, ctx.backend.meters.query(meter, query)


def result_json(query: MeterQuery, rows: list[Row]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "data": [
            {
                "value": r.value,
                "windowStart": rfc3339(r.window_start * 1_000_000),
                "windowEnd": rfc3339(r.window_end * 1_000_000),
                "subject": r.subject,
                "groupBy": r.group_by,
            }
            for r in rows
        ]
    }
    if query.start is not None:
        body["from"] = rfc3339(query.start * 1_000_000)
    if query.end is not None:
        body["to"] = rfc3339(query.end * 1_000_000)
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
                rfc3339(r.window_start * 1_000_000),
                rfc3339(r.window_end * 1_000_000),
                r.subject or "",
                *[r.group_by.get(d) or "" for d in dims],
                canonical(r.value),
            ]
        )
    return out.getvalue()


def query_from_params(items: list[tuple[str, str]]) -> MeterQuery:
    single: dict[str, str] = {}
    subjects: list[str] = []
    group_by: list[str] = []
    filters: list[tuple[str, tuple[str, ...], bool]] = []
    for name, value in items:
        if name in ("subject", "subject[]"):
            subjects.append(value)
        elif name in ("groupBy", "groupBy[]"):
            group_by.append(value)
        elif name.startswith("filterGroupBy[") and name.endswith("]"):
            filters.append((name[len("filterGroupBy[") : -1], (value,), False))
        elif name == "filterGroupBy":
            filters += [(k, (v,), False) for k, v in _loose_mapping(value).items()]
        elif name == "advancedMeterGroupByFilters":
            filters += _advanced(value)
        else:
            single[name] = value
    return _query(single, subjects, group_by, filters)


def query_from_body(body: Any) -> MeterQuery:
    if not isinstance(body, dict):
        raise InvalidInput("The query body must be a JSON object", code="invalid_query")
    filters: list[tuple[str, tuple[str, ...], bool]] = []
    for k, v in (body.get("filterGroupBy") or {}).items():
        filters.append((k, tuple(v) if isinstance(v, list) else (str(v),), False))
    if body.get("advancedMeterGroupByFilters"):
        filters += _advanced(msgspec.json.encode(body["advancedMeterGroupByFilters"]).decode())
    single = {k: str(v) for k, v in body.items() if k in ("from", "to", "windowSize", "windowTimeZone") and v}
    return _query(single, list(body.get("subject") or []), list(body.get("groupBy") or []), filters)


def _query(single: dict[str, str], subjects: list[str], group_by: list[str], filters: list[Any]) -> MeterQuery:
    start = parse_time("from", single.get("from"))
    end = parse_time("to", single.get("to"))
    for name, us in (("from", start), ("to", end)):
        if us is not None and us % 60_000_000:
            raise InvalidInput(
                f"`{name}` must fall on a whole minute (rollups are kept per minute)", code="unaligned_range"
            )
    if start is not None and end is not None and end <= start:
        raise InvalidInput("`to` must be after `from`", code="invalid_range")
    size = single.get("windowSize")
    if size is not None and size not in WindowSize.__members__:
        raise InvalidInput(f"windowSize must be one of {', '.join(WindowSize)}", code="invalid_window_size")
    return MeterQuery(
        start=None if start is None else start // 1_000_000,
        end=None if end is None else end // 1_000_000,
        window_size=WindowSize(size) if size else None,
        tz=zone(single.get("windowTimeZone") or "UTC"),
        subjects=tuple(subjects),
        group_by=tuple(dict.fromkeys(group_by)),
        filters=tuple(filters),
    )


def _loose_mapping(value: str) -> dict[str, str]:
    """``filterGroupBy`` as JSON, or as the Python dict repr some OpenMeter SDK versions send."""
    try:
        parsed = msgspec.json.decode(value)
    except msgspec.DecodeError:
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = None
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise InvalidInput(
            "filterGroupBy must map dimensions to values, e.g. filterGroupBy[model]=gpt-4", code="invalid_filter"
        )
    return {str(k): v for k, v in parsed.items()}


_OPS = {"$eq": False, "$in": False, "$ne": True, "$nin": True}


def _advanced(value: str) -> list[tuple[str, tuple[str, ...], bool]]:
    """advancedMeterGroupByFilters: supports $eq, $in, $ne and $nin on each dimension."""
    try:
        parsed = msgspec.json.decode(value)
    except msgspec.DecodeError:
        raise InvalidInput("advancedMeterGroupByFilters must be JSON", code="invalid_filter") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("advancedMeterGroupByFilters must be a JSON object", code="invalid_filter")
    out = []
    for dim, cond in parsed.items():
        if not isinstance(cond, dict) or len(cond) != 1 or next(iter(cond)) not in _OPS:
            raise InvalidInput(
                f"filter on {dim!r}: supported operators are $eq, $in, $ne, $nin", code="unsupported_filter"
            )
        op, arg = next(iter(cond.items()))
        values = tuple(str(v) for v in arg) if isinstance(arg, list) else (str(arg),)
        out.append((str(dim), values, _OPS[op]))
    return out
