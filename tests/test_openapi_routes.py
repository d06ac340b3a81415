"""The served OpenAPI document describes every route the app serves, with the same methods."""

from __future__ import annotations

import re

from conftest import Api

from meterline.api.app import ROUTES


def test_every_route_is_documented(api: Api) -> None:
    r = api.client.get("/api/v1/openapi.yaml")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/yaml")
    import yaml

    doc = yaml.safe_load(r.text)
    documented = {
        (re.sub(r"\{[^}]+\}", "{}", path), method.upper())
        for path, ops in doc["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "delete", "patch")
    }
    served = {
        (re.sub(r"\{[^}]+\}", "{}", route.path), method)
        for route in ROUTES
        for method in (route.methods or ())  # type: ignore[attr-defined]
        if method != "HEAD"
    }
    missing = sorted(served - documented)
    assert not missing, f"routes without an OpenAPI entry: {missing}"
    assert not sorted(documented - served), "documented paths that are not served"
