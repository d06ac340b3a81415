"""OPTIONS: meterline serves no CORS, so OPTIONS is not a method of any resource. Every path of
the OpenAPI document answers it with 405 ``method_not_allowed`` whose ``Allow`` header lists
exactly the methods the document gives that path (plus HEAD beside GET), before any
authentication, preflight headers or not; schemathesis' ``allow_header_conformance`` holds the
same rule on the paths it visits."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import yaml
from conftest import Api, build_api

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from build_api(tmp_path_factory.mktemp("options"))


def documented(api: Api) -> dict[str, set[str]]:
    doc = yaml.safe_load(api.client.get("/api/v1/openapi.yaml").text)
    return {path: {m.upper() for m in item if m in METHODS} for path, item in doc["paths"].items()}


@pytest.mark.parametrize("preflight", [False, True])
def test_options_is_405_with_the_documented_methods_on_every_path(api: Api, preflight: bool) -> None:
    cors = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"} if preflight else {}
    paths = documented(api)
    assert len(paths) > 50
    for path, methods in paths.items():
        r = api.client.options(re.sub(r"\{[^}]+\}", "x1", path), headers=cors)
        assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed"), (path, r.text)
        allow = {m.strip() for m in r.headers["allow"].split(",")}
        assert allow == methods | ({"HEAD"} if "GET" in methods else set()), (path, allow, methods)
        assert "access-control-allow-origin" not in r.headers
