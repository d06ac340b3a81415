"""Invoices, billing runs, previews, credits, the showback report and accounting exports.

``GET /api/v1/invoices/{number}`` answers the exact bytes stored when the invoice was
finalized; whether it was voided travels beside it (``Meterline-Invoice-Status`` header,
``/status``, list and export rows), never inside it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response
from starlette.routing import Route

from meterline.api import billing_exports as exports
from meterline.api.billing_exports import status_of
from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_time, typed_body
from meterline.domain.auth.keys import Scope
from meterline.domain.billing.credits import GrantTerms
from meterline.domain.billing.documents import decode_invoice, timestamp
from meterline.domain.billing.exports import invoice_csv, invoice_html
from meterline.domain.billing.money import currency, round_line
from meterline.domain.billing.records import InvoiceRecord, RunReport
from meterline.domain.clock import rfc3339


class VoidInput(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    reason: str
    reissue: bool = False


def record_json(r: InvoiceRecord) -> dict[str, Any]:
    """An invoice's list/status entry; its fields come from the stored invoice itself."""
    inv = decode_invoice(r.body)
    return {
        "number": r.number,
        "status": r.status,
        "customer": inv.customer,
        "subscription": r.subscription,
        "currency": inv.currency,
        "periodStart": timestamp(inv.period_start),
        "periodEnd": timestamp(inv.period_end),
        "issuedAt": timestamp(inv.issued_at),
        "total": str(inv.total),
        "amountDue": str(inv.amount_due),
        "replaces": r.replaces or None,
        "replacedBy": r.replaced_by,
        "voidReason": r.void_reason,
        "voidedAt": None if r.voided_us is None else rfc3339(r.voided_us),
    }


def run_json(report: RunReport) -> dict[str, Any]:
    failed = [
        {
            "subscription": f.subscription,
            "customer": f.customer,
            "periodStart": rfc3339(f.period_start_us),
            "code": f.code,
            "detail": f.detail,
        }
        for f in report.failed
    ]
    return {
        "at": rfc3339(report.at_us),
        "cutoff": rfc3339(report.cutoff_us),
        "created": report.created,
        "existing": report.existing,
        "stale": report.stale,
        "failed": failed,
    }


@endpoint(Scope.ADMIN)
async def run_billing(call: Call) -> Response:
    report = await call.run(call.ctx.billing.runs.run, call.namespace)
    return json_response(run_json(report))


@endpoint(Scope.READ)
async def preview(call: Call) -> Response:
    invoices, failures = await call.run(call.ctx.billing.runs.preview, call.namespace, call.path("customer"))
    items = [{**msgspec.to_builtins(i), "number": None} for i in invoices]
    problems = [{"subscription": f.subscription, "code": f.code, "detail": f.detail} for f in failures]
    return json_response({"at": rfc3339(call.ctx.clock.now_us()), "invoices": items, "problems": problems})


@endpoint(Scope.READ)
async def list_invoices(call: Call) -> Response:
    q = call.request.query_params
    start, end = parse_time("from", q.get("from")), parse_time("to", q.get("to"))
    records = await call.run(call.ctx.billing.invoices.list, call.namespace, q.get("customer"), start, end)
    return json_response({"items": [record_json(r) for r in records]})


async def _record(call: Call) -> InvoiceRecord:
    return await call.run(call.ctx.billing.invoices.get, call.namespace, call.path("number"))


@endpoint(Scope.READ)
async def get_invoice(call: Call) -> Response:
    r = await _record(call)
    return Response(r.body, media_type="application/json", headers={"Meterline-Invoice-Status": r.status})


@endpoint(Scope.READ)
async def invoice_status(call: Call) -> Response:
    return json_response(record_json(await _record(call)))


@endpoint(Scope.READ)
async def invoice_lines_csv(call: Call) -> Response:
    r = await _record(call)
    name = f'attachment; filename="{r.number}.csv"'
    return Response(invoice_csv(decode_invoice(r.body)), media_type="text/csv", headers={"Content-Disposition": name})


@endpoint(Scope.READ)
async def invoice_page(call: Call) -> Response:
    r = await _record(call)
    page = invoice_html(decode_invoice(r.body), status_of(r), call.ctx.config.billing.locale)
    return Response(page, media_type="text/html")


@endpoint(Scope.ADMIN)
async def void_invoice(call: Call) -> Response:
    inp = await typed_body(call.request, VoidInput, "void")
    args = (call.namespace, call.path("number"), inp.reason)
    record, replacement = await call.run(call.ctx.billing.invoices.void, *args, reissue=inp.reissue)
    return json_response({"voided": record_json(record), "replacement": replacement})


@endpoint(Scope.ADMIN)
async def reissue_invoice(call: Call) -> Response:
    replacement = await call.run(call.ctx.billing.invoices.reissue, call.namespace, call.path("number"))
    return json_response({"replacement": replacement}, 201)


# -- credits ----------------------------------------------------------------------------------


def _money(amount: Any, code: str) -> str:
    return str(round_line(amount, currency(code)))


@endpoint(Scope.ADMIN)
async def create_credit(call: Call) -> Response:
    terms = await typed_body(call.request, GrantTerms, "credit grant")
    stored = await call.run(call.ctx.billing.credits.grant, call.namespace, call.path("customer"), terms)
    return json_response({**msgspec.to_builtins(stored), "balance": _money(stored.amount, stored.currency)}, 201)


@endpoint(Scope.READ)
async def credit_balance(call: Call) -> Response:
    found = await call.run(call.ctx.billing.credits.balances, call.namespace, call.path("customer"))
    grants = [
        {**msgspec.to_builtins(g.terms), "balance": _money(g.balance, g.terms.currency), "expired": g.expired}
        for g in found.grants
    ]
    totals = {c: _money(b, c) for c, b in found.totals.items()}
    return json_response({"balances": totals, "grants": grants})


@endpoint(Scope.ADMIN)
async def void_credit(call: Call) -> Response:
    await call.run(call.ctx.billing.credits.void, call.namespace, call.path("customer"), call.path("key"))
    return Response(status_code=204)


_I = "/api/v1/invoices/{number}"
ROUTES = [
    *exports.ROUTES,
    Route("/api/v1/billing/runs", run_billing, methods=["POST"]),
    Route("/api/v1/customers/{customer}/invoice-preview", preview, methods=["GET"]),
    Route("/api/v1/customers/{customer}/credits", create_credit, methods=["POST"]),
    Route("/api/v1/customers/{customer}/credits", credit_balance, methods=["GET"]),
    Route("/api/v1/customers/{customer}/credits/{key}", void_credit, methods=["DELETE"]),
    Route("/api/v1/invoices", list_invoices, methods=["GET"]),
    Route(_I, get_invoice, methods=["GET"]),
    Route(_I + "/status", invoice_status, methods=["GET"]),
    Route(_I + "/lines.csv", invoice_lines_csv, methods=["GET"]),
    Route(_I + "/html", invoice_page, methods=["GET"]),
    Route(_I + "/void", void_invoice, methods=["POST"]),
    Route(_I + "/reissue", reissue_invoice, methods=["POST"]),
]
