"""Fixtures of HTTP tests that hold in both storage modes: a module imports ``server_fixture`` and
``http_fixture`` (pytest finds fixtures imported into a test module, under their names ``server``
and ``http``) and the ``ok`` helper.

``server`` is the shared embedded `meterline serve` or the shared scale-mode API node, each test
in a namespace of its own (``conftest.mode_server``); ``http`` is a client holding its admin key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODES, Server, mode_server


@pytest.fixture(name="server", params=MODES)
def server_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    yield from mode_server(request, tmp_path)


@pytest.fixture(name="http")
def http_fixture(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30) as c:
        yield c


def ok(r: httpx.Response, status: int = 200) -> Any:
    """The answer's JSON (None when empty) after checking its status."""
    assert r.status_code == status, r.text
    return r.json() if r.content else None
