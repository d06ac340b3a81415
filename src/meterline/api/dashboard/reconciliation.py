"""The reconciliation view: events received, accepted, metered and billed per period and meter,
with the reasons events did not get through (``services.reconciliation`` says what each
column counts). Filters: ``grain`` (default month), ``from``/``to``, ``tz``. Every number
comes from counts, rollups and indexes, so any range renders without reading raw events."""

from __future__ import annotations

from starlette.datastructures import QueryParams
from starlette.responses import Response

from meterline.api.dashboard.executive import span_from
from meterline.api.dashboard.web import Stamp, View, view
from meterline.domain.auth.keys import Scope
from meterline.domain.errors import NotSupported
from meterline.services.reconciliation import Reconciliation


@view(Scope.READ)
async def reconciliation(v: View) -> Response:
    service: Reconciliation | None = v.request.app.state.dashboard.reconciliation
    if service is None:
        raise NotSupported("this store offers no reconciliation counts", mode=v.ctx.config.storage.engine)
    params = dict(v.request.query_params)
    params.setdefault("grain", "month")
    span, filters = span_from(QueryParams(params), v.ctx.clock.now_us())
    report = await v.run(service.report, v.namespace, span)
    stamp = Stamp(v.ctx.clock.now_us(), report.position, report.position_us)  # what the counts reflect
    return v.render("reconciliation.html", title="Reconciliation", report=report, filters=filters, stamp=stamp)
