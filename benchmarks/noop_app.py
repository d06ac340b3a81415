"""The ceiling for ``ingest_http``: a no-op ingest endpoint on meterline's HTTP stack.

Same server settings as ``meterline serve`` (uvicorn, uvloop, httptools, no access log, one
process), same body reading and the same event decoding and validation
(``split_body`` + ``decode_events`` with the default limits); then it answers 204 without
storing anything. There is no API-key check (meterline's is a cached dictionary lookup).

Run by ``ingest_http.py``; by hand: ``.venv/bin/python benchmarks/noop_app.py --port 9000``.
"""

from __future__ import annotations

import argparse
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meterline.api.http import read_body
from meterline.api.ingest import SHAPES
from meterline.config import Config
from meterline.domain.events.decode import Limits, decode_events, split_body

CONFIG = Config()
LIMITS = Limits(
    CONFIG.server.max_events_per_request,
    int(CONFIG.ingest.future_skew.total_seconds() * 1_000_000),
    None
    if CONFIG.ingest.late_arrival_window is None
    else int(CONFIG.ingest.late_arrival_window.total_seconds() * 1_000_000),
)


async def ingest(request: Request) -> Response:
    shape = SHAPES.get(request.headers.get("content-type", "").split(";")[0].strip().lower(), "any")
    body = await read_body(request, CONFIG.server.max_body_bytes)
    raws = split_body(body, shape, CONFIG.server.max_events_per_request)
    candidates = decode_events(raws, "default", time.time_ns() // 1000, LIMITS)
    if any(c.event is None for c in candidates):
        return Response(status_code=400)
    return Response(status_code=204)


async def ready(request: Request) -> Response:
    return JSONResponse({"status": "ready"})


app = Starlette(routes=[Route("/api/v1/events", ingest, methods=["POST"]), Route("/readyz", ready)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
