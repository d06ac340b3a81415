"""What a meter has seen, as OpenMeter lists it: ``GET /api/v1/meters/{meter}/subjects`` and
``GET /api/v1/meters/{meter}/group-by/{groupByKey}/values`` (JSON arrays of strings, sorted).

``from`` (inclusive) and ``to`` (exclusive) take any RFC 3339 instant and are matched at the
rollups' one-minute resolution. Without either, subjects cover all time and group-by values the
last 24 hours (OpenMeter's defaults). ``search`` (meterline's addition, as in OpenMeter's newer
servers) keeps the values that contain it, ignoring case.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from meterline.adapters.sqlite.meter_values import group_values, subjects
from meterline.api.context import Context
from meterline.api.http import json_response, parse_time
from meterline.domain.auth.keys import Scope
from meterline.domain.errors import InvalidInput

_DAY_S = 86_400


async def list_subjects(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    start, end = _range(request)

    def load() -> list[str]:
        meter = ctx.backend.meters.get(key.namespace, request.path_params["meter"])
        return subjects(ctx.backend.db.reader(), meter, start, end)

    return json_response(_matching(request, await run_in_threadpool(load)))


async def list_group_by_values(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    key = ctx.auth.require(request, Scope.READ)
    start, end = _range(request)
    if start is None and end is None:
        start = ctx.clock.now_us() // 1_000_000 - _DAY_S
    dimension = request.path_params["groupByKey"]

    def load() -> list[str]:
        meter = ctx.backend.meters.get(key.namespace, request.path_params["meter"])
        if dimension not in meter.spec.group_by:
            known = ", ".join(sorted(meter.spec.group_by)) or "none"
            raise InvalidInput(
                f"{dimension!r} is not a groupBy key of meter {meter.spec.slug!r} (its keys: {known})",
                code="invalid_group_by",
            )
        return group_values(ctx.backend.db.reader(), meter, dimension, start, end)

    return json_response(_matching(request, await run_in_threadpool(load)))


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
