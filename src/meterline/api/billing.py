"""Plans (``/api/v1/plans``) and subscriptions (``/api/v1/subscriptions``); ``ROUTES`` also
carries the invoice, billing-run, credit, report and export routes of ``billing_invoices``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meterline.adapters.sqlite.billing_model import StoredSubscription
from meterline.api import billing_invoices as inv
from meterline.api.billing_scheduler import BillingScheduler, settings_from
from meterline.api.context import Context
from meterline.api.http import json_body, json_response, optional_body, parse_int, typed_body
from meterline.api.members import tree_problem
from meterline.domain.auth.keys import Scope
from meterline.domain.billing import PlanVersion, Subscription, parse_plan
from meterline.domain.clock import from_us, rfc3339, to_us
from meterline.domain.errors import InvalidInput, InvalidPlan

__all__ = ["ROUTES", "BillingScheduler", "settings_from", "start_scheduler"]
MINUTE_US = 60_000_000
MAX_VERSION = 2**31 - 1


class SubscriptionInput(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    customer: str
    plan: str
    version: int | None = None
    start: datetime | None = None
    anchor_day: int = 1
    zone: str | None = None


class ChangeInput(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    plan: str
    version: int | None = None
    at: datetime | None = None


class CancelInput(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    at: datetime | None = None


def plan_json(plan: PlanVersion) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(plan)
    published = None if plan.published_at is None else msgspec.to_builtins(plan.published_at)
    return {**body, "cadence": plan.cadence, "status": plan.status.value, "publishedAt": published}


def subscription_json(ctx: Context, s: StoredSubscription) -> dict[str, Any]:
    now, sub = ctx.clock.now_us(), s.subscription
    status = "scheduled" if to_us(sub.start) > now else "active"
    if sub.end is not None and to_us(sub.end) <= now:
        status = "ended"
    body: dict[str, Any] = {"id": s.id, **msgspec.to_builtins(sub), "anchorDay": sub.anchor_day, "status": status}
    body.setdefault("end", None)
    body.update(billedThrough=rfc3339(s.billed_through_us), previous=s.previous, createdAt=rfc3339(s.created_us))
    return body


def _ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def _version(request: Request) -> int:
    return parse_int("version", request.path_params["version"], 0, 1, MAX_VERSION)


def _now_minute(ctx: Context) -> datetime:
    now = ctx.clock.now_us()
    return from_us(now - now % MINUTE_US)


# -- plans ------------------------------------------------------------------------------------


async def _plan_body(request: Request, plan: str | None = None, version: int | None = None) -> tuple[PlanVersion, bool]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidPlan("Invalid price plan: the body must be a JSON object", problems=["not an object"])
    if {"status", "publishedAt"} & body.keys():
        raise InvalidPlan("status and publishedAt are set by publishing", problems=["status/publishedAt given"])
    for name, value in (("plan", plan), ("version", version)):
        if value is not None and body.setdefault(name, value) != value:
            raise InvalidInput(f"the body's {name} differs from the path's", code="key_mismatch")
    auto = "version" not in body
    body.setdefault("version", 1)
    problem = tree_problem(body, PlanVersion)
    if problem is not None:
        raise InvalidPlan(f"Invalid price plan: {problem}", problems=[problem])
    return parse_plan(body), auto


async def create_plan(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    plan, auto = await _plan_body(request)
    stored = await run_in_threadpool(ctx.backend.billing.create_plan, key.namespace, plan, auto_version=auto)
    return json_response(plan_json(stored), 201)


async def list_plans(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.READ)
    plans = await run_in_threadpool(ctx.backend.billing.plans, key.namespace, request.query_params.get("plan"))
    return json_response([plan_json(p) for p in plans])


async def get_plan(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.READ)
    name = request.path_params["plan"]
    plans = await run_in_threadpool(ctx.backend.billing.plans, key.namespace, name)
    if not plans:
        await run_in_threadpool(ctx.backend.billing.plan, key.namespace, name, 1)  # raises plan_not_found
    published = [p.version for p in plans if p.published]
    return json_response(
        {
            "plan": name,
            "latestPublished": published[-1] if published else None,
            "versions": [plan_json(p) for p in plans],
        }
    )


async def get_plan_version(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.READ)
    plan = await run_in_threadpool(
        ctx.backend.billing.plan, key.namespace, request.path_params["plan"], _version(request)
    )
    return json_response(plan_json(plan))


async def replace_plan_version(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    plan, _ = await _plan_body(request, request.path_params["plan"], _version(request))
    stored = await run_in_threadpool(ctx.backend.billing.replace_plan, key.namespace, plan)
    return json_response(plan_json(stored))


async def publish_plan_version(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    args = (key.namespace, request.path_params["plan"], _version(request))
    return json_response(plan_json(await run_in_threadpool(ctx.backend.billing.publish_plan, *args)))


async def copy_plan_version(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    args = (key.namespace, request.path_params["plan"], _version(request))
    return json_response(plan_json(await run_in_threadpool(ctx.backend.billing.copy_plan, *args)), 201)


# -- subscriptions ----------------------------------------------------------------------------


async def create_subscription(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, SubscriptionInput, "subscription")
    billing = ctx.backend.billing

    def work() -> StoredSubscription:
        customer = ctx.backend.customers.get(key.namespace, inp.customer)
        version = inp.version or billing.plan(key.namespace, inp.plan).version
        start = inp.start or _now_minute(ctx)
        sub = Subscription(customer.key, inp.plan, version, start, inp.zone or customer.timezone, inp.anchor_day)
        return billing.subscribe(key.namespace, sub)

    return json_response(subscription_json(ctx, await run_in_threadpool(work)), 201)


async def list_subscriptions(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.READ)
    customer = request.query_params.get("customer")

    def work() -> list[StoredSubscription]:
        cid = None if customer is None else ctx.backend.customers.get(key.namespace, customer).id
        return ctx.backend.billing.subscriptions(key.namespace, cid)

    return json_response([subscription_json(ctx, s) for s in await run_in_threadpool(work)])


async def get_subscription(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.READ)
    sub = await run_in_threadpool(ctx.backend.billing.subscription, key.namespace, request.path_params["id"])
    return json_response(subscription_json(ctx, sub))


async def change_subscription(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await typed_body(request, ChangeInput, "plan change")
    billing = ctx.backend.billing

    def work() -> list[StoredSubscription]:
        version = inp.version or billing.plan(key.namespace, inp.plan).version
        at = inp.at or _now_minute(ctx)
        return billing.change(key.namespace, request.path_params["id"], at, inp.plan, version)

    closed, started = await run_in_threadpool(work)
    return json_response({"closed": subscription_json(ctx, closed), "started": subscription_json(ctx, started)})


async def cancel_subscription(request: Request) -> Response:
    ctx = _ctx(request)
    key = ctx.auth.require(request, Scope.ADMIN)
    inp = await optional_body(request, CancelInput, "cancellation", CancelInput())
    at = inp.at or _now_minute(ctx)
    sub = await run_in_threadpool(ctx.backend.billing.cancel, key.namespace, request.path_params["id"], at)
    return json_response(subscription_json(ctx, sub))


def start_scheduler(ctx: Context) -> BillingScheduler:
    """Start the server's billing scheduler (a no-op thread when disabled in the config)."""
    scheduler = BillingScheduler(ctx.backend.billing, ctx.config.billing)
    scheduler.start()
    return scheduler


_V = "/api/v1/plans/{plan}/versions/{version}"
ROUTES = [
    Route("/api/v1/plans", create_plan, methods=["POST"]),
    Route("/api/v1/plans", list_plans, methods=["GET"]),
    Route("/api/v1/plans/{plan}", get_plan, methods=["GET"]),
    Route(_V, get_plan_version, methods=["GET"]),
    Route(_V, replace_plan_version, methods=["PUT"]),
    Route(_V + "/publish", publish_plan_version, methods=["POST"]),
    Route(_V + "/copy", copy_plan_version, methods=["POST"]),
    Route("/api/v1/subscriptions", create_subscription, methods=["POST"]),
    Route("/api/v1/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/api/v1/subscriptions/{id}", get_subscription, methods=["GET"]),
    Route("/api/v1/subscriptions/{id}/change", change_subscription, methods=["POST"]),
    Route("/api/v1/subscriptions/{id}/cancel", cancel_subscription, methods=["POST"]),
    *inv.ROUTES,
]
