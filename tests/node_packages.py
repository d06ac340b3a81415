"""The npm packages some tests run (``tests/openmeter_js``: OpenMeter's JavaScript SDK, the
``@hey-api/openapi-ts`` generator and TypeScript), installed from the lock file on first use."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).parent / "openmeter_js"


def npm_ci() -> Path:
    """``npm ci`` unless ``node_modules`` already matches the lock file (one process at a
    time: test workers share the directory); answers the package directory."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js 20+ and npm are needed for the JavaScript client tests")
    with (JS / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = JS / "node_modules" / ".package-lock.json"
        if not installed.exists() or installed.stat().st_mtime < (JS / "package-lock.json").stat().st_mtime:
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=600)
    return JS


def node_test(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one file of Node's test runner in ``tests/openmeter_js`` with ``env`` added."""
    return subprocess.run(
        ["node", "--test", "--test-reporter=spec", script],
        cwd=JS,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def failures(done: subprocess.CompletedProcess[str]) -> str:
    """The failure text for an assert (empty when every Node test passed)."""
    if done.returncode == 0 and "fail 0" in done.stdout:
        return ""
    return done.stdout[-20000:] + done.stderr[-5000:]
