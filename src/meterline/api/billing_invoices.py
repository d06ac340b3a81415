"""Invoices, billing runs, previews, credits, the showback report and accounting exports.

``GET /api/v1/invoices/{number}`` answers the exact bytes stored when the invoice was
finalized; whether it was voided travels beside it (``Meterline-Invoice-Status`` header,
``/status``, list and export rows), never inside it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meterline.adapters.sqlite.billing_model import InvoiceRecord
from meterline.adapters.sqlite.billing_run import BillingRuns, RunReport
from meterline.api import billing_exports as exports
from meterline.api.billing_exports import status_of
from meterline.api.billing_scheduler import settings_from
from meterline.api.context import Context
from meterline.api.http import json_response, parse_time, typed_body
from meterline.domain.auth.keys import Scope
from meterline.domain.billing.credits import GrantTerms, grant_problems
from meterline.domain.billing.documents import decode_invoice, timestamp
from meterline.domain.billing.exports import invoice_csv, invoice_html
from meterline.domain.billing.money import currency, round_line
from meterline.domain.clock import from_us, rfc3339, to_us
from meterline.domain.errors import InvalidInput

_encode = msgspec.json.Encoder().encode


class VoidInput(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    reason: str
    reissue: bool = False


def _ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


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


async def run_billing(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    runs = BillingRuns(ctx.backend.billing)
    report = await run_in_threadpool(runs.run, settings_from(ctx.config.billing), key.namespace)
    return json_response(run_json(report))


async def preview(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.READ)
    runs = BillingRuns(ctx.backend.billing)
    args = (settings_from(ctx.config.billing), key.namespace, request.path_params["customer"])
    invoices, failures = await run_in_threadpool(runs.preview, *args)
    items = [{**msgspec.to_builtins(i), "number": None} for i in invoices]
    problems = [{"subscription": f.subscription, "code": f.code, "detail": f.detail} for f in failures]
    return json_response({"at": rfc3339(ctx.clock.now_us()), "invoices": items, "problems": problems})


async def list_invoices(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.READ)
    q = request.query_params

    def work() -> list[InvoiceRecord]:
        customer = q.get("customer")
        cid = None if customer is None else ctx.backend.customers.get(key.namespace, customer).id
        start, end = parse_time("from", q.get("from")), parse_time("to", q.get("to"))
        return ctx.backend.billing.invoices.list(key.namespace, customer_id=cid, period_from_us=start, period_to_us=end)

    return json_response({"items": [record_json(r) for r in await run_in_threadpool(work)]})


async def _record(request: Request) -> tuple[Context, InvoiceRecord]:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.READ)
    record = await run_in_threadpool(ctx.backend.billing.invoices.get, key.namespace, request.path_params["number"])
    return ctx, record


async def get_invoice(request: Request) -> Response:
    _, r = await _record(request)
    return Response(r.body, media_type="application/json", headers={"Meterline-Invoice-Status": r.status})


async def invoice_status(request: Request) -> Response:
    _, r = await _record(request)
    return json_response(record_json(r))


async def invoice_lines_csv(request: Request) -> Response:
    _, r = await _record(request)
    name = f'attachment; filename="{r.number}.csv"'
    return Response(invoice_csv(decode_invoice(r.body)), media_type="text/csv", headers={"Content-Disposition": name})


async def invoice_page(request: Request) -> Response:
    ctx, r = await _record(request)
    page = invoice_html(decode_invoice(r.body), status_of(r), ctx.config.billing.locale)
    return Response(page, media_type="text/html")


async def void_invoice(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, VoidInput, "void")
    if not inp.reason.strip():
        raise InvalidInput("a void needs a reason", code="invalid_void")
    number = request.path_params["number"]
    record = await run_in_threadpool(ctx.backend.billing.invoices.void, key.namespace, number, inp.reason)
    replacement = None
    if inp.reissue:
        runs = BillingRuns(ctx.backend.billing)
        args = (settings_from(ctx.config.billing), key.namespace, number)
        replacement = await run_in_threadpool(runs.reissue, *args)
        record = await run_in_threadpool(ctx.backend.billing.invoices.get, key.namespace, number)
    return json_response({"voided": record_json(record), "replacement": replacement})


async def reissue_invoice(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    runs = BillingRuns(ctx.backend.billing)
    args = (settings_from(ctx.config.billing), key.namespace, request.path_params["number"])
    return json_response({"replacement": await run_in_threadpool(runs.reissue, *args)}, 201)


# -- credits ----------------------------------------------------------------------------------


async def create_credit(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    terms = await typed_body(request, GrantTerms, "credit grant")
    problems = grant_problems(terms)
    if problems:
        raise InvalidInput(
            "Invalid credit grant: " + "; ".join(problems), code="invalid_credit_grant", problems=problems
        )
    if terms.effective_at is None:
        terms = msgspec.structs.replace(terms, effective_at=from_us(ctx.clock.now_us()))

    def work() -> None:
        customer = ctx.backend.customers.get(key.namespace, request.path_params["customer"])
        ctx.backend.billing.invoices.add_grant(key.namespace, customer.id, terms)

    await run_in_threadpool(work)
    return json_response(
        {**msgspec.to_builtins(terms), "balance": str(round_line(terms.amount, currency(terms.currency)))}, 201
    )


async def credit_balance(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.READ)

    def work() -> list[tuple[GrantTerms, Any]]:
        customer = ctx.backend.customers.get(key.namespace, request.path_params["customer"])
        return ctx.backend.billing.invoices.grants(key.namespace, customer.id)

    now = ctx.clock.now_us()
    grants: list[dict[str, Any]] = []
    balances: dict[str, Decimal] = {}
    for terms, balance in await run_in_threadpool(work):
        usable = terms.expires_at is None or to_us(terms.expires_at) > now
        shown = str(round_line(balance, currency(terms.currency)))
        grants.append({**msgspec.to_builtins(terms), "balance": shown, "expired": not usable})
        if usable:
            balances[terms.currency] = balances.get(terms.currency, Decimal(0)) + balance
    totals = {c: str(round_line(b, currency(c))) for c, b in sorted(balances.items())}
    return json_response({"balances": totals, "grants": grants})


async def void_credit(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)

    def work() -> None:
        customer = ctx.backend.customers.get(key.namespace, request.path_params["customer"])
        ctx.backend.billing.invoices.void_grant(key.namespace, customer.id, request.path_params["key"])

    await run_in_threadpool(work)
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
