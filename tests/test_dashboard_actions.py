"""The dashboard's admin actions in headless Chromium against a real server: re-submitting dead
letters after the cause is fixed, releasing quarantined events to a customer; and that a read
key cannot do either, even with a valid session and CSRF token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_site import Served, Site, browser_errors, event, ingest, launch, post, serve, shots_dir, sign_in


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    extra = {
        "ops": ("ops", ["admin"]),
        "ops-read": ("ops", ["read"]),
        "hold": ("hold", ["admin"]),
        "hold-read": ("hold", ["read"]),
    }
    served: Served = serve(tmp_path_factory.mktemp("dashboard-actions") / "data", extra)
    try:
        yield served.site
    finally:
        served.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@contextmanager
def session_of(site: Site, key: str, path: str) -> Iterator[tuple[httpx.Client, str]]:
    """An HTTP client signed in to the dashboard with ``key``, and its CSRF token."""
    with httpx.Client(base_url=site.url, timeout=30) as c:
        yield c, _signed_in(c, site, key, path)


def _signed_in(c: httpx.Client, site: Site, key: str, path: str) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/sign-in").text)
    assert token is not None
    c.post("/ui/sign-in", data={"csrf": token.group(1), "key": site.keys[key], "next": path})
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', c.get(path).text)
    assert csrf is not None
    return csrf.group(1)


def dead_letters(site: Site, key: str) -> list[dict[str, Any]]:
    with site.client(key) as c:
        items: list[dict[str, Any]] = c.get("/api/v1/dead-letters").json()["items"]
        return items


def test_dead_letters_are_resubmitted_after_the_cause_is_fixed(site: Site, browser: Any, tmp_path: Path) -> None:
    with site.client("ops") as c:
        post(c, "/api/v1/meters", {"slug": "calls", "eventType": "request", "aggregation": "COUNT"})
        assert c.put("/api/v1/settings", json={"unknownSubjects": "reject"}).status_code == 200
        ingest(c, [event(f"n{i}", "newco", "request", "2026-03-01T10:00:00Z") for i in range(2)], rejected=2)
    letters = dead_letters(site, "ops")
    assert [d["reason"] for d in letters] == ["unknown_subject", "unknown_subject"]
    # a read key with a valid session and token may not re-submit
    with session_of(site, "ops-read", "/ui/dead-letters") as (c, csrf):
        r = c.post("/ui/dead-letters/resubmit", data={"csrf": csrf, "ids": ",".join(str(d["id"]) for d in letters)})
        assert r.status_code == 403 and "admin" in r.text
        assert 'disabled title="needs an admin key"' in c.get("/ui/dead-letters").text
    assert len(dead_letters(site, "ops")) == 2
    # another namespace's admin cannot reach them by id
    with session_of(site, "hold", "/ui/dead-letters") as (c, csrf):
        r = c.post("/ui/dead-letters/resubmit", data={"csrf": csrf, "ids": str(letters[0]["id"])})
        assert r.status_code == 303 and "none+found" in r.headers["location"]
    assert len(dead_letters(site, "ops")) == 2
    # the cause is fixed: newco becomes a customer; the admin re-submits from the page
    with site.client("ops") as c:
        post(c, "/api/v1/customers", {"key": "newco"})
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = browser_errors(page)
    sign_in(page, site, "ops", "/ui/dead-letters")
    assert page.locator("#dead-letters tr[data-id]").count() == 2
    page.click("#resubmit button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "2 accepted" in page.inner_text("[role=status]")
    assert page.locator("#dead-letters tr[data-id]").count() == 0
    page.screenshot(path=str(shots_dir(tmp_path) / "dead-letters-resubmitted.png"), full_page=True)
    context.close()
    assert dead_letters(site, "ops") == []
    with site.client("ops") as c:
        r = c.get("/api/v1/meters/calls/query", params={"subject": "newco", "consistency": "strong"})
        assert [row["value"] for row in r.json()["data"]] == [2]
    assert errors == []


def test_quarantined_events_are_released_to_a_customer(site: Site, browser: Any, tmp_path: Path) -> None:
    with site.client("hold") as c:
        post(c, "/api/v1/meters", {"slug": "calls", "eventType": "request", "aggregation": "COUNT"})
        assert c.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}).status_code == 200
        ingest(c, [event(f"h{i}", "held", "request", "2026-03-01T10:00:00Z") for i in range(3)])
    with session_of(site, "hold-read", "/ui/quarantine") as (c, csrf):
        r = c.post("/ui/quarantine/release", data={"csrf": csrf, "subject": "held", "customer": "heldco"})
        assert r.status_code == 403
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    errors = browser_errors(page)
    sign_in(page, site, "hold", "/ui/quarantine")
    assert page.locator("#quarantine tr[data-id]").count() == 3
    page.fill("#release input[name=customer]", "heldco")
    page.click("#release button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "3 quarantined events released" in page.inner_text("[role=status]")
    assert page.locator("#quarantine tr[data-id]").count() == 0
    page.screenshot(path=str(shots_dir(tmp_path) / "quarantine-released.png"), full_page=True)
    context.close()
    with site.client("hold") as c:
        r = c.get("/api/v1/meters/calls/query", params={"subject": "held", "consistency": "strong"})
        assert [row["value"] for row in r.json()["data"]] == [3]
    assert errors == []
