"""OpenMeter's JavaScript SDK (``@openmeter/sdk`` from the npm registry, pinned by
``tests/openmeter_js/package-lock.json``), run by Node's test runner against a real server.

``npm ci`` installs it on first use (``node_packages``), so a fresh clone's ``./run test``
needs only Node 20+ and npm. What the SDK calls and checks: ``tests/openmeter_js/sdk.test.mjs``.
"""

from __future__ import annotations

from pathlib import Path

from conftest import start_server
from node_packages import failures, node_test, npm_ci


def test_openmeter_javascript_sdk(tmp_path: Path) -> None:
    npm_ci()
    # the notification channel the SDK creates points at 127.0.0.1
    server = start_server(tmp_path / "data", env={"METERLINE_ALERTS__ALLOW_PRIVATE_WEBHOOK_TARGETS": "true"})
    try:
        done = node_test("sdk.test.mjs", {"METERLINE_URL": server.url, "METERLINE_KEY": server.key})
    finally:
        server.stop()
    assert not failures(done), failures(done)
