"""What a meter has seen, as OpenMeter lists it: ``GET /api/v1/meters/{meter}/subjects`` and
``GET /api/v1/meters/{meter}/group-by/{groupByKey}/values`` (JSON arrays of strings, sorted).

``from`` (inclusive) and ``to`` (exclusive) take any RFC 3339 instant and are matched at the
rollups' one-minute resolution. Without either, subjects cover all time and group-by values the
last 24 hours (OpenMeter's defaults). ``search`` (meterline's addition, as in OpenMeter's newer
servers) keeps the values that contain it, ignoring case.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_time
from meterline.domain.auth.keys import Scope
from meterline.domain.errors import InvalidInput


@endpoint(Scope.READ)
async def list_subjects(call: Call) -> Response:
    start, end = _range(call.request)
    values = await call.run(call.ctx.catalog.meters.subjects, call.namespace, call.path("meter"), start, end)
    return json_response(_matching(call.request, values))


@endpoint(Scope.READ)
async def list_group_by_values(call: Call) -> Response:
    start, end = _range(call.request)
    meters, meter, dimension = call.ctx.catalog.meters, call.path("meter"), call.path("groupByKey")
    values = await call.run(meters.group_values, call.namespace, meter, dimension, start, end)
    return json_response(_matching(call.request, values))


def _range(request: Request) -> tuple[int | None, int | None]:
    """``from``/``to`` as epoch seconds: ``from`` rounded down, ``to`` up (a partial second counts)."""
    q = request.query_params
    start_us, end_us = parse_time("from", q.get("from")), parse_time("to", q.get("to"))
    if start_us is not None and end_us is not None and end_us < start_us:
        raise InvalidInput("`to` must not be before `from`", code="invalid_range")
    start = None if start_us is None else start_us // 1_000_000
    end = None if end_us is None else -(-end_us // 1_000_000)
    return start, end


def _matching(request: Request, values: list[str]) -> list[str]:
    search = request.query_params.get("search")
    if not search:
        return values
    needle = search.casefold()
    return [v for v in values if needle in v.casefold()]
