"""``GET /api/v1/meters/{meter}/top``: the K subjects (or values of one group-by dimension) with
the largest usage of a meter over ``[from, to)`` (``domain.meters.top``)."""

from __future__ import annotations

from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_int
from meterline.api.meter_query import limits_of, query_from_params, run_query
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.errors import InvalidInput
from meterline.domain.meters.model import Meter
from meterline.domain.meters.query import SUBJECT, MeterQuery
from meterline.domain.meters.top import MAX_K, Top

_OWN = ("by", "k")
_REFUSED = ("windowSize", "groupBy", "groupBy[]")


@endpoint(Scope.READ)
async def top_of_meter(call: Call) -> Response:
    request = call.request
    items = request.query_params.multi_items()
    for name, _ in items:
        if name in _REFUSED:
            raise InvalidInput(f"`{name}` does not apply to a top-K answer (use `by`)", code="invalid_parameter")
    q = request.query_params
    by = q.get("by", SUBJECT)
    if not by.strip():
        raise InvalidInput("`by` is empty", code="invalid_parameter")
    k = parse_int("k", q.get("k"), 10, 1, MAX_K)
    query = query_from_params([(n, v) for n, v in items if n not in _OWN], limits_of(call.ctx.config))
    slug = call.path("meter")

    def work() -> Response:
        meter, top = call.ctx.catalog.usage.top(call.namespace, slug, query, by, k)
        return json_response(top_json(meter, query, top))

    return await run_query(request, work)


def top_json(meter: Meter, query: MeterQuery, top: Top) -> dict[str, object]:
    body: dict[str, object] = {
        "meter": meter.slug,
        "aggregation": meter.spec.aggregation.value,
        "by": top.by,
        "k": top.k,
        "candidates": top.candidates,
        "total": top.total,
        "rest": top.rest,
        "data": [{"rank": r.rank, "key": r.key, "value": r.value} for r in top.items],
    }
    if query.start is not None:
        body["from"] = rfc3339(query.start * 1_000_000 if query.start_us is None else query.start_us)
    if query.end is not None:
        body["to"] = rfc3339(query.end * 1_000_000 if query.end_us is None else query.end_us)
    return body
