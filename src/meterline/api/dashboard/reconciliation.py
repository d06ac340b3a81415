"""The reconciliation view: events received, accepted, metered and billed per period and meter,
with the reasons events did not get through (``services.reconciliation`` says what each
column counts). Filters: ``grain`` (default month), ``from``/``to``, ``tz``; ``check=ledger``
also counts the ledger's own events (accepted, skipped, received), which reads every event of
the range: a check run on request, not part of the first render."""

from __future__ import annotations

from starlette.datastructures import QueryParams
from starlette.responses import Response

from meterline.api.dashboard.executive import span_from
from meterline.api.dashboard.web import View, view
from meterline.domain.auth.keys import Scope
from meterline.services.reconciliation import Reconciliation


@view(Scope.READ)
async def reconciliation(v: View) -> Response:
    service: Reconciliation = v.request.app.state.dashboard.reconciliation
    params = dict(v.request.query_params)
    params.setdefault("grain", "month")
    span, filters = span_from(QueryParams(params), v.ctx.clock.now_us())
    report = await v.run(service.report, v.namespace, span, check_ledger=v.q("check") == "ledger")
    return v.render("reconciliation.html", title="Reconciliation", report=report, filters=filters, stamp=v.stamp())
