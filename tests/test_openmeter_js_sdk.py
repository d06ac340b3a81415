"""OpenMeter's JavaScript SDK (``@openmeter/sdk`` from the npm registry, pinned by
``tests/openmeter_js/package-lock.json``), run by Node's test runner against a real server.

``npm ci`` installs it on first use (``node_packages``), so a fresh clone's ``./run test``
needs only Node 20+ and npm. What the SDK calls and checks: ``tests/openmeter_js/sdk.test.mjs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MODES, Server, mode_server
from node_packages import failures, node_test, npm_ci


@pytest.fixture(params=MODES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A real server in each storage mode, with a namespace of the test's own (both shared
    servers let webhook targets on 127.0.0.1, where the notification channel the SDK creates
    points)."""
    yield from mode_server(request, tmp_path)


def test_openmeter_javascript_sdk(server: Server) -> None:
    npm_ci()
    done = node_test("sdk.test.mjs", {"METERLINE_URL": server.url, "METERLINE_KEY": server.key})
    assert not failures(done), failures(done)
