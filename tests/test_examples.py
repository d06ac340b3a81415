"""The example apps in examples/ run as documented against a real server: metered, limited,
and refused with 402/403 when they should be."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import Server, free_port
from test_middleware_helpers import create_request_meter, metered

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

ROOT = Path(__file__).resolve().parent.parent


def provision(server: Server) -> None:
    create_request_meter(server)
    h = {"Authorization": f"Bearer {server.key}"}
    for body in ({"key": "acme"}, {"key": "nobody"}):
        assert httpx.post(f"{server.url}/api/v1/customers", json=body, headers=h).status_code == 201
    f = httpx.post(
        f"{server.url}/api/v1/features",
        json={"key": "api_calls", "name": "API calls", "meterSlug": "requests"},
        headers=h,
    )
    assert f.status_code == 201, f.text
    e = httpx.post(
        f"{server.url}/api/v1/customers/acme/entitlements",
        headers=h,
        json={"type": "metered", "featureKey": "api_calls", "issueAfterReset": 2, "usagePeriod": {"interval": "MONTH"}},
    )
    assert e.status_code == 201, e.text


def wait_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "the example app exited"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the example app did not start")


@pytest.mark.parametrize("example, path", [("asgi_app.py", "/reports/42"), ("wsgi_app.py", "/reports/42")])
def test_example_app_meters_and_enforces(server: Server, example: str, path: str) -> None:
    provision(server)
    port = free_port()
    env = {**os.environ, "METERLINE_URL": server.url, "METERLINE_API_KEY": server.key, "PORT": str(port)}
    app = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / example)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}{path}"
    try:
        wait_up(url, app)
        for n in (1, 2):
            r = httpx.get(url, headers={"X-Customer": "acme"})
            assert r.status_code == 200, r.text
            assert int(r.headers["ratelimit-limit"]) >= 2 and "ratelimit-remaining" in r.headers
            deadline = time.monotonic() + 10
            while metered(server, "acme") < n:  # metering happens in the background
                assert time.monotonic() < deadline, "the request was not metered"
                time.sleep(0.05)
        # The WSGI example caches checks for 1 s; the cache counts the two requests it let
        # through against the room the server reported, so the third asks the server again.
        over = httpx.get(url, headers={"X-Customer": "acme"})
        assert over.status_code == 402 and over.json()["code"] == "quota_exhausted"
        denied = httpx.get(url, headers={"X-Customer": "nobody"})
        assert denied.status_code == 403 and denied.headers["content-type"].startswith("application/problem+json")
        assert httpx.get(url).status_code == 200  # no customer: neither enforced nor metered
        time.sleep(1)
        assert metered(server, "acme") == 2 and metered(server, "nobody") == 0
    finally:
        app.terminate()
        app.wait(timeout=10)
