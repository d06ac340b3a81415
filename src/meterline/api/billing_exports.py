"""The showback report (``/api/v1/billing/report``) and the accounting export of a period's
invoices (``/api/v1/billing/export``): both computed on request, nothing stored."""

from __future__ import annotations

import io
from datetime import datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import parse_time
from meterline.api.meter_query import run_query
from meterline.domain import csvsafe
from meterline.domain.auth.keys import Scope
from meterline.domain.billing.documents import Invoice, decode_invoice
from meterline.domain.billing.exports import Status, export_csv
from meterline.domain.billing.records import InvoiceRecord
from meterline.domain.billing.report import ReportRow
from meterline.domain.clock import from_us, to_us
from meterline.domain.errors import InvalidInput

_encode = msgspec.json.Encoder().encode


def status_of(r: InvoiceRecord) -> Status:
    return Status(r.status, r.void_reason, r.replaced_by)


def _range(request: Request) -> tuple[datetime, datetime]:
    q = request.query_params
    start, end = parse_time("from", q.get("from")), parse_time("to", q.get("to"))
    if start is None or end is None:
        raise InvalidInput("`from` and `to` are required (RFC 3339)", code="invalid_range")
    return from_us(start), from_us(end)


def _format(request: Request, allowed: tuple[str, ...]) -> str:
    fmt = request.query_params.get("format", allowed[0])
    if fmt not in allowed:
        raise InvalidInput(f"`format` must be one of {', '.join(allowed)}", code="invalid_parameter")
    return fmt


@endpoint(Scope.READ)
async def report(call: Call) -> Response:
    start, end = _range(call.request)
    fmt = _format(call.request, ("json", "csv"))
    q = call.request.query_params
    customer, group_by, showback = q.get("customer"), q.get("groupBy"), call.ctx.billing.showback

    def work() -> Response:
        rep = showback.report(call.namespace, start, end, customer=customer, group_by=group_by)
        if fmt == "csv":
            return Response(_report_csv(rep.rows), media_type="text/csv")
        body = {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "groupBy": rep.group_by,
            "rows": rep.rows,
            "totals": rep.totals,
            "problems": rep.problems,
        }
        return Response(_encode(body), media_type="application/json")

    return await run_query(call.request, work)


def _report_csv(rows: list[ReportRow]) -> str:
    out = io.StringIO()
    writer = csvsafe.writer(out)
    writer.writerow(
        [
            "customer",
            "plan",
            "version",
            "currency",
            "start",
            "end",
            "kind",
            "card",
            "name",
            "meter",
            "group",
            "quantity",
            "amount",
        ]
    )
    for r in rows:
        group = ";".join(f"{k}={v}" for k, v in sorted((r.group or {}).items()))
        writer.writerow(
            [
                r.customer,
                r.plan,
                r.version,
                r.currency,
                r.start.isoformat(),
                r.end.isoformat(),
                r.kind,
                r.card or "",
                r.name,
                r.meter or "",
                group,
                "" if r.quantity is None else r.quantity,
                r.amount,
            ]
        )
    return out.getvalue()


@endpoint(Scope.READ)
async def export(call: Call) -> Response:
    start, end = _range(call.request)
    fmt = _format(call.request, ("jsonl", "csv"))
    records = await call.run(call.ctx.billing.invoices.list, call.namespace, None, to_us(start), to_us(end))
    if fmt == "csv":
        pairs: list[tuple[Invoice, Status]] = [(decode_invoice(r.body), status_of(r)) for r in records]
        return Response(export_csv(pairs), media_type="text/csv")
    lines = [
        _encode(
            {
                "status": r.status,
                "voidReason": r.void_reason,
                "replacedBy": r.replaced_by,
                "invoice": msgspec.Raw(r.body),
            }
        )
        for r in records
    ]
    return Response(b"".join(line + b"\n" for line in lines), media_type="application/x-ndjson")


ROUTES = [
    Route("/api/v1/billing/report", report, methods=["GET"]),
    Route("/api/v1/billing/export", export, methods=["GET"]),
]
