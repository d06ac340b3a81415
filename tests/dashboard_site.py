"""A real dashboard site for the browser tests: the app served by uvicorn on a free port over a
real SQLite store (or, in scale mode, over the shared scale site), seeded through the HTTP API,
and Debian's Chromium driven by Playwright.

Screenshots go to ``tmp_path`` (kept with the test's files), or to ``$METERLINE_SCREENSHOTS``
when it is set: ``docs/screenshots`` is made that way.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
import uvicorn
from conftest import T0_US, free_port, make_key
from scale_site import Site as ScaleSite

from meterline.api.app import create_app
from meterline.config import Config, load_config
from meterline.domain.clock import FixedClock

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass
class Site:
    url: str
    clock: FixedClock
    keys: dict[str, str]
    data: dict[str, Any] = field(default_factory=dict)

    def client(self, key: str = "admin") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.keys[key]}"}, timeout=30)


@dataclass
class Served:
    site: Site
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(
    data_dir: Path, extra: dict[str, tuple[str, list[str]]] | None = None, oidc: dict[str, Any] | None = None
) -> Served:
    """The app over ``data_dir`` on a free port, with keys: admin, read, ingest (namespace
    default), other (admin of namespace ``other``) and ``extra`` (name -> (namespace, scopes));
    ``oidc``: the ``[oidc]`` section (single sign-on)."""
    keys = {
        "admin": make_key(data_dir, ["admin"]),
        "read": make_key(data_dir, ["read"]),
        "ingest": make_key(data_dir, ["ingest"]),
        "other": make_key(data_dir, ["admin"], namespace="other"),
    }
    for name, (namespace, scopes) in (extra or {}).items():
        keys[name] = make_key(data_dir, scopes, namespace=namespace)
    config = load_config(
        None,
        {
            "storage": {"data_dir": data_dir, "fsync": "normal"},
            "billing": {"scheduler_enabled": False},
            **({"oidc": oidc} if oidc else {}),
        },
    )
    return _start(config, keys)


def serve_scale(scale: ScaleSite) -> Served:
    """As :func:`serve`, an API node of scale mode in process over the shared scale site's
    engines (its sink worker applies the log), with keys of namespaces of its own: admin, read
    and ingest of one, ``other`` (admin) of another."""
    namespace = f"n{uuid.uuid4().hex[:10]}"
    keys = {
        "admin": scale.key(namespace),
        "read": scale.key(namespace, ("read",)),
        "ingest": scale.key(namespace, ("ingest",)),
        "other": scale.key(f"other-{namespace}"),
    }
    overrides = {"auth": {"bootstrap_admin_key": False}, "billing": {"scheduler_enabled": False}}
    return _start(load_config(scale.config_path, overrides), keys)


def _start(config: Config, keys: dict[str, str]) -> Served:
    port = free_port()
    clock = FixedClock(T0_US)
    server = uvicorn.Server(uvicorn.Config(create_app(config, clock), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    return Served(Site(f"http://127.0.0.1:{port}", clock, keys), server, thread)


def post(c: httpx.Client, path: str, body: object, status: int = 201) -> Any:
    r = c.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def ingest(c: httpx.Client, events: list[dict[str, Any]], rejected: int = 0) -> dict[str, Any]:
    """Send ``events`` (``rejected`` of them are expected to be refused)."""
    r = c.post(
        "/api/v1/events",
        content=msgspec.json.encode(events),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    if rejected:
        assert r.status_code == 400 and len(r.json()["rejected"]) == rejected, r.text
    else:
        assert r.status_code in (200, 204), r.text
    return {"position": r.headers.get("meterline-ledger-position"), "body": r.json() if r.content else None}


def event(id_: str, subject: str, type_: str, time_: str, **data: object) -> dict[str, Any]:
    return {"specversion": "1.0", "id": id_, "source": "seed", "type": type_, "subject": subject, "time": time_,
            "data": data}  # fmt: skip


def shots_dir(tmp_path: Path) -> Path:
    target = os.environ.get("METERLINE_SCREENSHOTS")
    path = Path(target) if target else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def browser_errors(page: Any) -> list[str]:
    """Collects console errors and uncaught exceptions of ``page`` into the returned list."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def sign_in(page: Any, site: Site, key: str = "admin", target: str = "/ui/") -> None:
    page.goto(f"{site.url}/ui/sign-in?{urlencode({'next': target})}")
    page.fill("#key", site.keys[key])
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def number(text: str) -> str:
    """A shown number without its thousands separators."""
    return re.sub(r"[,\s]", "", text)


def launch(p: Any) -> Any:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: install Debian's chromium (./run test does) to run this test"
    return p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)


def each_width(browser: Any, site: Site, path: str, name: str, shots: Path, key: str = "admin") -> list[str]:
    """Open ``path`` signed in at desktop and phone width (the page may not be wider than the
    screen: wide tables scroll inside their cards), screenshot both, and return the browser
    errors seen."""
    errors: list[str] = []
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=size)
        try:
            page = context.new_page()
            errors += browser_errors(page)
            sign_in(page, site, key, path)
            assert page.url.startswith(f"{site.url}{path.split('?')[0]}"), page.url
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= size["width"], f"{path} is {width} px wide at {label} width {size['width']}"
            page.screenshot(path=str(shots / f"{name}-{label}.png"), full_page=True)
        finally:
            context.close()
    return errors
