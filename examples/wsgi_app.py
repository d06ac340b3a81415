"""A small WSGI app behind the meterline middleware, served by wsgiref.

    METERLINE_URL=http://127.0.0.1:8888 METERLINE_API_KEY=ml_... python examples/wsgi_app.py
    curl -i -H 'X-Customer: acme' http://127.0.0.1:8000/reports/42

With Flask, wrap the WSGI callable the same way: ``app.wsgi_app = MeterlineWSGIMiddleware(app.wsgi_app, ...)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import make_server

from meterline.sdk import MeterlineWSGIMiddleware, MiddlewareConfig


def customer_of(environ: dict[str, Any]) -> str | None:
    """Here: a header. In a real app: the tenant of the authenticated API key or session."""
    return environ.get("HTTP_X_CUSTOMER")


def features_of(environ: dict[str, Any]) -> list[tuple[str, int]]:
    """Exports also need the ``exports`` feature; every request uses one ``api_calls``."""
    if environ["PATH_INFO"].startswith("/exports/"):
        return [("api_calls", 1), ("exports", 0)]
    return [("api_calls", 1)]


def reports(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    environ["meterline.route"] = "/reports/{id}"  # the path recorded in usage events
    body = b'{"ok": true}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = MeterlineWSGIMiddleware(
    reports,
    MiddlewareConfig(
        url=os.environ.get("METERLINE_URL", "http://127.0.0.1:8888"),
        api_key=os.environ["METERLINE_API_KEY"],
        customer=customer_of,
        features=features_of,
        rate_limit="100/minute",
        fail="closed",
        check_cache_ttl=1.0,
    ),
)

if __name__ == "__main__":
    with make_server("127.0.0.1", int(os.environ.get("PORT", "8000")), app) as server:
        print(f"serving on http://127.0.0.1:{server.server_port}")
        try:
            server.serve_forever()
        finally:
            app.close()
