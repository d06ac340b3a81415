"""Operations endpoints: health, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from importlib import resources

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from meterline.api.context import Context
from meterline.api.problems import problem


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    try:
        ctx.backend.db.reader().execute("SELECT 1 FROM meta LIMIT 1").fetchone()
    except Exception:
        return problem(request, 503, "not_ready", "Not ready", "The store is not reachable")
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    text = resources.files("meterline.api").joinpath("openapi.yaml").read_text()
    return Response(text, media_type="application/yaml")
