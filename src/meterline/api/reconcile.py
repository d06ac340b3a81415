"""``GET /api/v1/reconciliation``: every difference between received, accepted, metered and
billed, per meter and period, with its cause (``services.reconcile``)."""

from __future__ import annotations

import re
from decimal import Decimal

from starlette.datastructures import QueryParams
from starlette.responses import Response

from meterline.api.dashboard.executive import span_from
from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_int
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.decimals import add
from meterline.domain.errors import InvalidInput, NotSupported
from meterline.services.reconcile import Reconciled, Reconciler


@endpoint(Scope.READ)
async def reconciliation(call: Call) -> Response:
    q = call.request.query_params
    for name in ("from", "to", "grain", "tz"):
        if name in q and not q[name].strip():
            raise InvalidInput(f"`{name}` is empty", code="invalid_parameter")
    params = dict(q)
    params.setdefault("grain", "month")
    span, _ = span_from(QueryParams(params), call.ctx.clock.now_us())
    reconciler: Reconciler | None = getattr(call.request.app.state, "reconciler", None)
    if reconciler is None:
        raise NotSupported("this store offers no reconciliation counts", mode=call.ctx.config.storage.engine)
    tolerance = parse_int("tolerance", q.get("tolerance"), reconciler.tolerance, 0, 2**31)
    quantity = _quantity_tolerance(q.get("quantityTolerance"), reconciler.quantity_tolerance)
    found = await call.run(reconciler.reconcile, call.namespace, span, tolerance=tolerance, quantity_tolerance=quantity)
    return json_response(reconciled_json(found))


_DECIMAL = re.compile(r"[0-9]{1,30}(\.[0-9]{1,30})?")


def _quantity_tolerance(value: str | None, default: Decimal) -> Decimal:
    """``quantityTolerance``: a plain decimal, 0 or more (digits and one point)."""
    if value is None:
        return default
    if not _DECIMAL.fullmatch(value):
        raise InvalidInput("`quantityTolerance` must be a decimal number, 0 or more", code="invalid_parameter")
    return Decimal(value)


def reconciled_json(r: Reconciled) -> dict[str, object]:
    return {
        "namespace": r.namespace,
        "asOfPosition": r.position,
        "tolerance": r.tolerance,
        "withinTolerance": r.within_tolerance,
        "unexplained": r.unexplained,
        "quantityTolerance": r.quantity_tolerance,
        "unexplainedBilled": r.unexplained_billed,
        "periods": [rfc3339(s * 1_000_000) for s in r.starts],
        "lines": [
            {
                "meter": ln.meter,
                "period": rfc3339(ln.period_start * 1_000_000),
                "received": ln.received,
                "accepted": ln.accepted,
                "metered": ln.metered,
                "expected": ln.expected,
                "value": ln.value,
                "billed": ln.billed,
            }
            for ln in r.lines
        ],
        "differences": [
            {
                "meter": d.meter,
                "period": rfc3339(d.period_start * 1_000_000),
                "stage": d.stage,
                "cause": d.cause,
                "events": d.events,
            }
            for d in r.differences
        ],
        "billed": [
            {
                "meter": b.meter,
                "customer": b.customer,
                "invoice": b.invoice,
                "windowStart": rfc3339(b.window_start_us),
                "windowEnd": rfc3339(b.window_end_us),
                "currency": b.currency,
                "billed": b.billed,
                "metered": b.metered,
                "difference": add(b.metered, -b.billed),
                "amount": b.amount,
                "causes": [{"cause": c, "quantity": q} for c, q in b.causes],
            }
            for b in r.billed
        ],
    }
