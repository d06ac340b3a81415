"""Shared fixtures: an in-process app on a real SQLite file, and a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from scale_site import Site, site
from stack import launch
from stack.launch import Stack
from starlette.testclient import TestClient

from meterline.adapters.sqlite.database import DB_FILE
from meterline.adapters.sqlite.keys import create_key
from meterline.adapters.sqlite.schema import connect, create_schema
from meterline.api.app import create_app
from meterline.config import Config, load_config
from meterline.domain.auth.keys import parse_scopes
from meterline.domain.clock import FixedClock

# 2026-03-01T12:00:00Z: tests that freeze time use this instant.
T0_US = 1_772_366_400_000_000


def make_key(data_dir: Path, scopes: list[str], namespace: str = "default") -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(data_dir / DB_FILE)
    create_schema(conn)
    _, secret = create_key(conn, namespace, "test", parse_scopes(scopes), T0_US)
    conn.close()
    return secret


@dataclass
class Api:
    """An in-process app with an admin key, a frozen clock and a real SQLite file (or, built by
    :func:`build_scale_api`, the engines of a scale-mode site)."""

    client: TestClient
    key: str
    clock: FixedClock
    data_dir: Path
    config: Config
    keys: Callable[[list[str], str | None], str] | None = None
    """Mints a key in the app's store: (scopes, namespace or None for the key's own)."""

    def new_key(self, scopes: list[str], namespace: str | None = None) -> str:
        """A new key of the app's store with ``scopes``, in the key's namespace or another one
        (a scale-mode site makes that one unique to the test too)."""
        if self.keys is not None:
            return self.keys(scopes, namespace)
        return make_key(self.data_dir, scopes, namespace or "default")

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}", **extra}

    def post_events(
        self, events: object, content_type: str = "application/cloudevents-batch+json", **headers: str
    ) -> httpx.Response:
        import msgspec

        return self.client.post(
            "/api/v1/events",
            content=msgspec.json.encode(events),
            headers=self.headers(**{"Content-Type": content_type, **headers}),
        )

    def create_meter(self, **spec: object) -> httpx.Response:
        return self.client.post("/api/v1/meters", json=spec, headers=self.headers())

    def query(
        self, meter: str, params: list[tuple[str, str]] | dict[str, str] | None = None, **headers: str
    ) -> httpx.Response:
        return self.client.get(f"/api/v1/meters/{meter}/query", params=params or {}, headers=self.headers(**headers))


def build_api(tmp_path: Path, **overrides: dict[str, object]) -> Iterator[Api]:
    data_dir = tmp_path / "data"
    key = make_key(data_dir, ["admin"])
    config = load_config(None, {"storage": {"data_dir": data_dir, "fsync": "normal"}, **overrides})
    clock = FixedClock(T0_US)
    with TestClient(create_app(config, clock)) as client:
        yield Api(client, key, clock, data_dir, config)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A real `meterline serve` process."""

    url: str
    key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_server(data_dir: Path, port: int | None = None, env: dict[str, str] | None = None) -> Server:
    key = make_key(data_dir, ["admin"])
    port = port or free_port()
    log = data_dir.parent / f"{data_dir.name}-server.log"  # kept, so that a failed start can be read
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "meterline.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, **(env or {})},
        )
    server = Server(f"http://127.0.0.1:{port}", key, data_dir, process, port)
    try:
        wait_ready(server)
    except RuntimeError as exc:
        server.stop()
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{exc}; the end of its log ({log}):\n{tail}") from None
    return server


def wait_ready(server: Server, timeout: float = 60.0) -> None:
    """Until /readyz answers 200 (a crash fails at once; the timeout is for a start slowed down by a busy machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not become ready")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path / "server-data")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def scale_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The local scale stack (Kafka protocol, ClickHouse, PostgreSQL, Redis), started once per
    test process on first use, as ``./run stack up`` starts it. Tests isolate themselves in it:
    a ClickHouse database, a Kafka topic, a PostgreSQL schema or a Redis key prefix of their own."""
    root = tmp_path_factory.mktemp("stack", numbered=True)
    stack = launch.up(root / "engines")
    try:
        yield stack
    finally:
        launch.down(root / "engines")


@pytest.fixture(scope="session")
def scale_site(scale_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A site on the stack shared by this test process's scale-mode API tests (each test works
    in a namespace of its own), with one sink worker running."""
    # usage reads wait for the sink worker as long as a loaded machine may need (never longer
    # than it takes: they return as soon as the node's writes are applied)
    # and webhook receivers of the notification tests listen on 127.0.0.1
    extra = "\n[aggregation]\nmax_wait = 60.0\n[alerts]\nallow_private_webhook_targets = true\n"
    with site(scale_stack, tmp_path_factory.mktemp("site", numbered=True), extra=extra) as s:
        s.worker()
        yield s


def build_scale_api(s: Site, tmp_path: Path, **overrides: dict[str, object]) -> Iterator[Api]:
    """As :func:`build_api`, for an API node of scale mode (in process, frozen clock) over the
    site's engines; the key's namespace is the test's own."""
    namespace = f"n{uuid.uuid4().hex[:10]}"
    key = s.key(namespace)
    overrides = {"auth": {"bootstrap_admin_key": False}, **overrides}
    config = load_config(s.config_path, overrides)
    clock = FixedClock(T0_US)

    def keys(scopes: list[str], other: str | None) -> str:
        return s.key(namespace if other is None else f"{other}-{namespace}", tuple(scopes))

    with TestClient(create_app(config, clock)) as client:
        yield Api(client, key, clock, tmp_path / "data", config, keys)


MODES = ["embedded", "scale"]
"""The storage modes an API test that holds for both runs in (``mode_api``)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``embedded_only("why")`` runs in embedded mode only: its scale-mode
    parameter is deselected (what it checks is not offered in scale mode; the reason says why).

    Modules marked ``heavy`` (tests of tens of seconds: real server processes, kill -9 under
    load, the fuzzer) run first, each kept whole and in its place among them. ``./run test``
    hands whole modules to the two workers in this order (``--dist loadfile
    --no-loadscope-reorder``), so the long ones start early and the run ends on short ones
    instead of one core finishing a long test alone while the other idles."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        scale = callspec is not None and "scale" in callspec.params.values()
        (drop if scale and item.get_closest_marker("embedded_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    keep.sort(key=lambda item: item.get_closest_marker("heavy") is None)  # stable: modules stay whole
    items[:] = keep


def mode_api(request: pytest.FixtureRequest, tmp_path: Path, **overrides: dict[str, object]) -> Iterator[Api]:
    """``build_api`` or ``build_scale_api``, as the fixture's parameter (a mode of MODES) says."""
    if request.param == "scale":
        yield from build_scale_api(request.getfixturevalue("scale_site"), tmp_path, **overrides)
    else:
        yield from build_api(tmp_path, **overrides)


@pytest.fixture(scope="session")
def scale_node(scale_site: Site) -> Server:
    """A real `meterline serve` API node of the shared scale site (no key: see ``mode_server``).

    Its billing scheduler is off: it would bill every namespace of the site's catalog on the
    real clock, including those of the in-process API tests of the same site (``mode_api``), whose
    subscriptions on a fixed clock lie in the past (an invoice they did not ask for, finalized
    in the middle of the test)."""
    port = free_port()
    process = scale_site.node(port, env={"METERLINE_BILLING__SCHEDULER_ENABLED": "false"})
    return Server(f"http://127.0.0.1:{port}", "", scale_site.dir, process, port)


@pytest.fixture(scope="session")
def embedded_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `meterline serve` in embedded mode shared by this test process's tests of both
    modes (no key: see ``mode_server``), as ``scale_node`` is in scale mode; webhook receivers
    of the notification tests listen on 127.0.0.1, which it allows as the scale site does."""
    env = {"METERLINE_ALERTS__ALLOW_PRIVATE_WEBHOOK_TARGETS": "true"}
    s = start_server(tmp_path_factory.mktemp("embedded-node", numbered=True) / "data", env=env)
    yield s
    s.stop()


def mode_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A real server in the mode of the fixture's parameter: the shared embedded `meterline serve`
    or the shared scale-mode API node, with an admin key of a namespace of the test's own (every
    read and write is scoped by the key's namespace, so tests sharing a server see nothing of
    each other's; starting a server per test cost seconds of every test's setup)."""
    namespace = f"n{uuid.uuid4().hex[:10]}"
    if request.param == "scale":
        node: Server = request.getfixturevalue("scale_node")
        site_: Site = request.getfixturevalue("scale_site")
        yield Server(node.url, site_.key(namespace), node.data_dir, node.process, node.port)
        return
    node = request.getfixturevalue("embedded_node")
    key = make_key(node.data_dir, ["admin"], namespace)
    yield Server(node.url, key, node.data_dir, node.process, node.port)
