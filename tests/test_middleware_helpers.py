"""Real parts for the middleware tests: a meterline server, a Starlette app on uvicorn and a WSGI
app on wsgiref (each on a free port in a thread), a flaky proxy and a black-hole port.

Holds no tests itself; the ``test_middleware_*`` modules import from it.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import msgspec
import uvicorn
from conftest import Server, free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meterline.sdk import MeterlineASGIMiddleware, MeterlineWSGIMiddleware, MiddlewareConfig

METER = "requests"


def create_request_meter(server: Server) -> None:
    spec = {"slug": METER, "eventType": "request", "aggregation": "COUNT"}
    r = httpx.post(f"{server.url}/api/v1/meters", json=spec, headers={"Authorization": f"Bearer {server.key}"})
    assert r.status_code == 201, r.text


def metered(server: Server, customer: str) -> Decimal:
    """How many requests meterline counted for ``customer``, over HTTP."""
    r = httpx.get(
        f"{server.url}/api/v1/meters/{METER}/query",
        params={"subject": customer},
        headers={"Authorization": f"Bearer {server.key}"},
    )
    assert r.status_code == 200, r.text
    rows = msgspec.json.Decoder(float_hook=Decimal).decode(r.content)["data"]
    return sum((Decimal(row["value"]) for row in rows), Decimal(0))


def stored_events(server: Server, customer: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{server.url}/api/v1/events", params={"subject": customer}, headers={"Authorization": f"Bearer {server.key}"}
    )
    return [row["event"] for row in r.json()]


def by_header(request: dict[str, Any]) -> str | None:
    """The customer from ``X-Customer``: works on an ASGI scope and on a WSGI environ."""
    if request.get("type") == "http":
        value = dict(request["headers"]).get(b"x-customer")
        return value.decode() if value else None
    return request.get("HTTP_X_CUSTOMER")


# --- the apps under test -------------------------------------------------------------------


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"item {request.path_params['item_id']}", headers={"X-App": "yes"})


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/items/{item_id}", item)])


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    environ["meterline.route"] = "/items/{item_id}" if environ["PATH_INFO"].startswith("/items/") else None
    body = f"item {environ['PATH_INFO'].rsplit('/', 1)[-1]}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("X-App", "yes")])
    return [body]


@dataclass
class Stack:
    """An app wrapped in the middleware, served over HTTP."""

    kind: str
    url: str
    middleware: MeterlineASGIMiddleware | MeterlineWSGIMiddleware
    stop: Callable[[], None]
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def get(self, path: str = "/items/7", customer: str | None = "acme") -> httpx.Response:
        return self.client.get(path, headers={"X-Customer": customer} if customer else {})

    def wait_queued(self, queued: int, timeout: float = 30.0) -> None:
        """Wait until ``queued`` events were queued: ASGI queues just after the response was sent."""
        _wait(lambda: self.middleware.stats.queued >= queued, timeout)

    def flush(self, queued: int, timeout: float = 30.0) -> None:
        """Wait until ``queued`` events were queued, then until they were sent."""
        self.wait_queued(queued, timeout)
        assert self.middleware._core.sender.flush(timeout), "usage events were not sent in time"


@contextmanager
def serve_stack(kind: str, config: MiddlewareConfig[Any]) -> Iterator[Stack]:
    serve = serve_asgi if kind == "asgi" else serve_wsgi
    with serve(config) as stack:
        try:
            yield stack
        finally:
            stack.client.close()


@contextmanager
def serve_asgi(config: MiddlewareConfig[Any]) -> Iterator[Stack]:
    middleware = MeterlineASGIMiddleware(starlette_app(), config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(middleware, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait(lambda: server.started)

    def stop() -> None:
        server.should_exit = True
        thread.join(15)

    yield Stack("asgi", f"http://127.0.0.1:{port}", middleware, stop)
    stop()


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_wsgi(config: MiddlewareConfig[Any]) -> Iterator[Stack]:
    middleware = MeterlineWSGIMiddleware(wsgi_app, config)
    server = make_server("127.0.0.1", 0, middleware, _ThreadingWSGIServer, _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        middleware.close()

    yield Stack("wsgi", f"http://127.0.0.1:{server.server_port}", middleware, stop)
    stop()


def _wait(ready: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.01)


# --- unreachable and unreliable meterlines ----------------------------------------------------


@contextmanager
def black_hole() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def closed_port() -> str:
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class FlakyProxy:
    """Answers the first event POSTs per ``plan`` and proxies the rest to meterline.

    Plan steps: ``"forward-then-503"`` (meterline commits, the answer is lost), ``"503"``
    (meterline never sees it), ``"forward"``. Every POSTed batch's event ids are recorded.
    """

    target: str
    plan: list[str]
    batches: list[list[str]] = field(default_factory=list)
    url: str = ""

    def handle(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        self.batches.append([e["id"] for e in msgspec.json.decode(body)])
        step = self.plan.pop(0) if self.plan else "forward"
        if step != "503":
            r = httpx.post(f"{self.target}/api/v1/events", content=body, headers=headers)
            if step == "forward":
                return r.status_code, r.content
        return 503, b""


@contextmanager
def flaky_proxy(target: str, plan: list[str]) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(target, list(plan))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            keep = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
            status, content = proxy.handle(body, keep)
            self.send_response(status)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    proxy.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
