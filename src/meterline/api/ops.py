"""Operations endpoints: health, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import functools
import re
import zoneinfo
from importlib import resources
from typing import Any

import yaml
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from meterline.api.context import Context
from meterline.api.health import Health
from meterline.api.problems import problem
from meterline.domain.billing.money import known_currencies
from meterline.domain.events.model import Reason


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 ready (with any warnings) or 503 not_ready; what each check means: ``api.health``."""
    health: Health = request.app.state.health
    problems, warnings = health.problems(), [w.json() for w in health.warnings()]
    if problems:
        return problem(
            request,
            503,
            "not_ready",
            "Not ready",
            "; ".join(p.detail for p in problems),
            {"Retry-After": str(request.app.state.retry_after)},
            operationalCode=problems[0].code.value,
            checks=[p.json() for p in problems],
            warnings=warnings,
        )
    return JSONResponse({"status": "ready", "warnings": warnings})


async def metrics(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return Response(openapi_text(), media_type="application/yaml")


@functools.cache
def openapi_document() -> dict[str, Any]:
    """``openapi.yaml`` with every fragment under ``openapi/`` merged in (their ``paths``,
    ``tags`` and ``components``), so each area of the API documents itself in its own file."""
    root = resources.files("meterline.api")
    doc: dict[str, Any] = yaml.safe_load(root.joinpath("openapi.yaml").read_text())
    fragments = sorted((f for f in root.joinpath("openapi").iterdir() if f.name.endswith(".yaml")), key=str)
    for fragment in fragments:
        part = yaml.safe_load(fragment.read_text()) or {}
        doc.setdefault("tags", []).extend(part.get("tags", []))
        doc["paths"].update(part.get("paths", {}))
        for section, items in part.get("components", {}).items():
            doc.setdefault("components", {}).setdefault(section, {}).update(items)
    _refusable(doc)
    schemas = doc["components"]["schemas"]
    # the values this server accepts, so a client (or a test generator) never has to guess them
    schemas["TimeZone"]["enum"] = sorted(zoneinfo.available_timezones())
    schemas["Currency"]["enum"] = sorted(known_currencies())
    for name in ("TimeZone", "Currency"):  # names generators can use as constants, one per value
        schemas[name]["x-enum-varnames"] = enum_names(schemas[name]["enum"])
    _v2_entitlement(schemas)
    schemas["RejectionReason"]["enum"] = [reason.value for reason in Reason]
    return doc


def enum_names(values: list[str]) -> list[str]:
    """A distinct upper-case identifier for each value (``Etc/GMT+1`` -> ``ETC_GMT_PLUS_1``):
    generators derive constant names from values, and some values differ only in punctuation."""
    names: list[str] = []
    seen: set[str] = set()
    for value in values:
        spelled = value.upper().replace("+", "_PLUS_").replace("-", "_MINUS_")
        name = re.sub(r"[^A-Z0-9]+", "_", spelled).strip("_")
        name = name if name[:1].isalpha() else f"V_{name}"
        unique, n = name, 2
        while unique in seen:
            unique, n = f"{name}_{n}", n + 1
        seen.add(unique)
        names.append(unique)
    return names


def _v2_entitlement(schemas: dict[str, Any]) -> None:
    """OpenMeter's v2 entitlement body: the v1 body's members and v2's own (one flat object,
    which generators handle where an allOf over the v1 body's anyOf is refused)."""
    v1 = schemas["EntitlementCreate"]
    extra = schemas.pop("EntitlementV2Members")
    schemas["EntitlementCreateV2"] = {
        **v1,
        "description": extra["description"],
        "properties": {**v1["properties"], **extra["properties"]},
    }


def _refusable(doc: dict[str, Any]) -> None:
    """Backpressure may answer any ``/api/v1`` or ``/api/v2`` request 503 ``overloaded`` (api.backpressure):
    every such operation documents the 503 response, also where its own file does not."""
    for path, item in doc["paths"].items():
        if path.startswith(("/api/v1/", "/api/v2/")):
            for method, operation in item.items():
                if method in ("get", "put", "post", "delete", "patch"):
                    operation["responses"].setdefault("503", {"$ref": "#/components/responses/StorageUnavailable"})


@functools.cache
def openapi_text() -> str:
    return str(yaml.safe_dump(openapi_document(), sort_keys=False, allow_unicode=True))
