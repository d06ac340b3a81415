"""Plans (``/api/v1/billing/plans``) and subscriptions (``/api/v1/billing/subscriptions``); ``ROUTES`` also
carries the invoice, billing-run, credit, report and export routes of ``billing_invoices``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meterline.api import billing_invoices as inv
from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_body, json_response, optional_body, parse_int, typed_body
from meterline.api.members import tree_problem
from meterline.domain.auth.keys import Scope
from meterline.domain.billing import PlanVersion, parse_plan
from meterline.domain.billing.records import StoredSubscription
from meterline.domain.clock import rfc3339, to_us
from meterline.domain.errors import InvalidInput, InvalidPlan
from meterline.services.billing_subscriptions import SubscriptionRequest

__all__ = ["ROUTES"]
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


def subscription_json(call: Call, s: StoredSubscription) -> dict[str, Any]:
    now, sub = call.ctx.clock.now_us(), s.subscription
    status = "scheduled" if to_us(sub.start) > now else "active"
    if sub.end is not None and to_us(sub.end) <= now:
        status = "ended"
    body: dict[str, Any] = {"id": s.id, **msgspec.to_builtins(sub), "anchorDay": sub.anchor_day, "status": status}
    body.setdefault("end", None)
    body.update(billedThrough=rfc3339(s.billed_through_us), previous=s.previous, createdAt=rfc3339(s.created_us))
    return body


def _version(call: Call) -> int:
    return parse_int("version", call.path("version"), 0, 1, MAX_VERSION)


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


@endpoint(Scope.ADMIN)
async def create_plan(call: Call) -> Response:
    plan, auto = await _plan_body(call.request)
    stored = await call.run(call.ctx.billing.plans.create, call.namespace, plan, auto_version=auto)
    return json_response(plan_json(stored), 201)


@endpoint(Scope.READ)
async def list_plans(call: Call) -> Response:
    plans = await call.run(call.ctx.billing.plans.versions, call.namespace, call.request.query_params.get("plan"))
    return json_response([plan_json(p) for p in plans])


@endpoint(Scope.READ)
async def get_plan(call: Call) -> Response:
    name = call.path("plan")
    plans = await call.run(call.ctx.billing.plans.history, call.namespace, name)
    published = [p.version for p in plans if p.published]
    return json_response(
        {
            "plan": name,
            "latestPublished": published[-1] if published else None,
            "versions": [plan_json(p) for p in plans],
        }
    )


@endpoint(Scope.READ)
async def get_plan_version(call: Call) -> Response:
    plan = await call.run(call.ctx.billing.plans.get, call.namespace, call.path("plan"), _version(call))
    return json_response(plan_json(plan))


@endpoint(Scope.ADMIN)
async def replace_plan_version(call: Call) -> Response:
    plan, _ = await _plan_body(call.request, call.path("plan"), _version(call))
    stored = await call.run(call.ctx.billing.plans.replace, call.namespace, plan)
    return json_response(plan_json(stored))


@endpoint(Scope.ADMIN)
async def publish_plan_version(call: Call) -> Response:
    version = _version(call)
    published = await call.run(call.ctx.billing.plans.publish, call.namespace, call.path("plan"), version)
    return json_response(plan_json(published))


@endpoint(Scope.ADMIN)
async def copy_plan_version(call: Call) -> Response:
    version = _version(call)
    copied = await call.run(call.ctx.billing.plans.copy, call.namespace, call.path("plan"), version)
    return json_response(plan_json(copied), 201)


# -- subscriptions ----------------------------------------------------------------------------


@endpoint(Scope.ADMIN)
async def create_subscription(call: Call) -> Response:
    inp = await typed_body(call.request, SubscriptionInput, "subscription")
    req = SubscriptionRequest(inp.customer, inp.plan, inp.version, inp.start, inp.anchor_day, inp.zone)
    sub = await call.run(call.ctx.billing.subscriptions.subscribe, call.namespace, req)
    return json_response(subscription_json(call, sub), 201)


@endpoint(Scope.READ)
async def list_subscriptions(call: Call) -> Response:
    customer = call.request.query_params.get("customer")
    subs = await call.run(call.ctx.billing.subscriptions.list, call.namespace, customer)
    return json_response([subscription_json(call, s) for s in subs])


@endpoint(Scope.READ)
async def get_subscription(call: Call) -> Response:
    sub = await call.run(call.ctx.billing.subscriptions.get, call.namespace, call.path("id"))
    return json_response(subscription_json(call, sub))


@endpoint(Scope.ADMIN)
async def change_subscription(call: Call) -> Response:
    inp = await typed_body(call.request, ChangeInput, "plan change")
    args = (call.namespace, call.path("id"), inp.plan, inp.version, inp.at)
    closed, started = await call.run(call.ctx.billing.subscriptions.change, *args)
    return json_response({"closed": subscription_json(call, closed), "started": subscription_json(call, started)})


@endpoint(Scope.ADMIN)
async def cancel_subscription(call: Call) -> Response:
    inp = await optional_body(call.request, CancelInput, "cancellation", CancelInput())
    sub = await call.run(call.ctx.billing.subscriptions.cancel, call.namespace, call.path("id"), inp.at)
    return json_response(subscription_json(call, sub))


_V = "/api/v1/billing/plans/{plan}/versions/{version}"
ROUTES = [
    Route("/api/v1/billing/plans", create_plan, methods=["POST"]),
    Route("/api/v1/billing/plans", list_plans, methods=["GET"]),
    Route("/api/v1/billing/plans/{plan}", get_plan, methods=["GET"]),
    Route(_V, get_plan_version, methods=["GET"]),
    Route(_V, replace_plan_version, methods=["PUT"]),
    Route(_V + "/publish", publish_plan_version, methods=["POST"]),
    Route(_V + "/copy", copy_plan_version, methods=["POST"]),
    Route("/api/v1/billing/subscriptions", create_subscription, methods=["POST"]),
    Route("/api/v1/billing/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/api/v1/billing/subscriptions/{id}", get_subscription, methods=["GET"]),
    Route("/api/v1/billing/subscriptions/{id}/change", change_subscription, methods=["POST"]),
    Route("/api/v1/billing/subscriptions/{id}/cancel", cancel_subscription, methods=["POST"]),
    *inv.ROUTES,
]
