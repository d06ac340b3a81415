"""A small Starlette app behind the meterline middleware.

    METERLINE_URL=http://127.0.0.1:8888 METERLINE_API_KEY=ml_... python examples/asgi_app.py
    curl -i -H 'X-Customer: acme' http://127.0.0.1:8000/reports/42

Each request from a customer is rate-limited (10 per second), checked against the customer's
``api_calls`` entitlement and metered as a ``request`` event (subject = the customer).
"""

from __future__ import annotations

import os

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Scope

from meterline.sdk import MeterlineASGIMiddleware, MiddlewareConfig


def customer_of(scope: Scope) -> str | None:
    """Here: a header. In a real app: the tenant of the authenticated API key or session."""
    value = dict(scope["headers"]).get(b"x-customer")
    return value.decode() if value else None


async def report(request: Request) -> JSONResponse:
    return JSONResponse({"report": request.path_params["report_id"]})


app = MeterlineASGIMiddleware(
    Starlette(routes=[Route("/reports/{report_id}", report)]),
    MiddlewareConfig(
        url=os.environ.get("METERLINE_URL", "http://127.0.0.1:8888"),
        api_key=os.environ["METERLINE_API_KEY"],
        customer=customer_of,
        features=[("api_calls", 1)],
        rate_limit="10/second",
        fail="open",
    ),
)

if __name__ == "__main__":
    uvicorn.run(app, port=int(os.environ.get("PORT", "8000")))
