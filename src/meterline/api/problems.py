"""The one place errors become HTTP: RFC 7807 ``application/problem+json`` with stable codes.

Body: ``type`` (``urn:meterline:problem:<code>``), ``title``, ``status``, ``detail``,
``instance`` (the request path), ``code``, plus error-specific members. Operational failures
add ``operationalCode`` (``METER-001``...: see ``meterline.domain.errors.OpsCode``); every 503 answer
carries ``Retry-After`` (``server.retry_after`` seconds); every 401 ``WWW-Authenticate``.
Unexpected exceptions become a 500 ``internal_error`` whose detail never contains the
exception text. Every text in a problem body passes through :func:`meterline.domain.redact.redact`:
an API key, signing secret or token that a caller put into a path, parameter or body is never
echoed back.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from meterline.api.openmeter_paths import openmeter_operation
from meterline.domain.errors import MeterlineError, NotFound, OpsCode
from meterline.domain.redact import redact, redact_value

log = logging.getLogger("meterline.api")
PROBLEM = "application/problem+json"
_encode = msgspec.json.Encoder(decimal_format="number").encode


def problem(
    request: Request,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = {
        "type": f"urn:meterline:problem:{code}",
        "title": title,
        "status": status,
        "detail": redact(detail),
        "instance": redact(request.url.path),
        "code": code,
        **{k: redact_value(v) for k, v in extra.items()},
    }
    return Response(_encode(body), status_code=status, media_type=PROBLEM, headers=headers)


def problem_for(request: Request, exc: MeterlineError, retry_after: int = 1) -> Response:
    """The problem+json answer for ``exc``, with its operational code and headers."""
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.status == 503:
        headers["Retry-After"] = str(retry_after)
    extra = {k: v for k, v in exc.extra.items() if k not in ("type", "title", "status", "detail", "instance")}
    if exc.operational_code is not None:
        extra["operationalCode"] = exc.operational_code.value
    return problem(request, exc.status, exc.code, exc.title, exc.detail, headers or None, **extra)


async def on_meterline_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MeterlineError)
    state = request.app.state
    subject = request.path_params.get("subject")
    if subject is not None and exc.code == "customer_not_found":
        # OpenMeter's subject paths: usage events alone never register a subject (as there)
        exc = NotFound(
            f"No subject {subject!r}: events alone do not register a subject; register it with"
            " POST /api/v1/subjects (which gives it a customer) or add it to a customer's subjectKeys",
            code="subject_not_found",
        )
    if exc.operational_code is OpsCode.AUTHENTICATION_FAILED and hasattr(state, "incidents"):
        state.ctx.metrics.auth_failures.inc()
        state.incidents.note(exc.operational_code, "authentication failed: %s", exc.code, problem=exc.code)
    return problem_for(request, exc, getattr(state, "retry_after", 1))


_SEE = " (docs/openmeter-compatibility.md lists what it serves)"


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = {"Allow": ", ".join(allowed_methods(request))} if exc.status_code == 405 else None
    # An operation of OpenMeter's document that meterline does not serve says so, whether the
    # path is not served at all (404) or served with other methods (405)
    found = openmeter_operation(request.method, request.url.path) if exc.status_code in (404, 405) else None
    if found is not None:
        template, operation = found
        detail = (
            f"{request.method} {template} ({operation}) is part of OpenMeter's API that meterline does not serve{_SEE}"
        )
        return problem(
            request, 501, "not_supported", "Not supported", detail, headers, operation=operation, path=template
        )
    codes = {404: ("not_found", "Not found"), 405: ("method_not_allowed", "Method not allowed")}
    code, title = codes.get(exc.status_code, ("http_error", "HTTP error"))
    detail = f"{request.method} {request.url.path} is not an endpoint" if exc.status_code in codes else str(exc.detail)
    return problem(request, exc.status_code, code, title, detail, headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods served at this path (often one route per method). A literal path such as
    ``/entitlements/check`` is its own resource: templated routes that also match it do not count."""
    scope = {**request.scope, "method": "GET"}
    routes = [r for r in request.app.routes if r.matches(scope)[0] is not Match.NONE]
    literal = [r for r in routes if not getattr(r, "param_convertors", None)]
    return sorted({m for r in literal or routes for m in getattr(r, "methods", None) or ()})


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem(request, 500, "internal_error", "Internal error", "The server failed to handle this request")
