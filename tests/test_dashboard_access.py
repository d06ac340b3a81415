"""Dashboard sign-in, session cookie, CSRF and the live on-call view, in headless Chromium
against a real server (``dashboard_site``)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_site import (
    Served,
    Site,
    browser_errors,
    each_width,
    event,
    ingest,
    launch,
    number,
    post,
    serve,
    shots_dir,
    sign_in,
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    served: Served = serve(tmp_path_factory.mktemp("dashboard-access") / "data")
    try:
        with served.site.client() as c:
            post(c, "/api/v1/meters", {"slug": "calls", "eventType": "request", "aggregation": "COUNT"})
            ingest(c, [event(f"e{i}", "acme", "request", "2026-03-01T10:00:00Z") for i in range(7)])
            ingest(
                c, [{"specversion": "1.0", "id": "bad", "source": "seed", "type": "request"}], rejected=1
            )  # no subject
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


def metric(site: Site, name: str) -> int:
    text = httpx.get(f"{site.url}/metrics").text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


def signed_in_client(site: Site, key: str = "admin") -> tuple[httpx.Client, str]:
    """An HTTP client with a dashboard session, and the session's CSRF token."""
    c = httpx.Client(base_url=site.url, timeout=30)
    form = c.get("/ui/sign-in").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    r = c.post("/ui/sign-in", data={"csrf": token.group(1), "key": site.keys[key], "next": "/ui/oncall"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/oncall", r.text
    page = c.get("/ui/oncall").text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert csrf is not None
    return c, csrf.group(1)


def test_oncall_shows_the_metrics_numbers_and_refreshes_itself(site: Site, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = browser_errors(page)
    sign_in(page, site, "admin", "/ui/oncall")
    assert page.url == f"{site.url}/ui/oncall"
    accepted = number(page.inner_text("tr[data-outcome=accepted] td:nth-child(2)"))
    assert accepted == str(metric(site, 'meterline_events_total{outcome="accepted"}')) == "7"
    rejected = number(page.inner_text("tr[data-outcome=rejected] td:nth-child(2)"))
    assert rejected == str(metric(site, 'meterline_events_total{outcome="rejected"}')) == "1"
    assert "missing_field" in page.inner_text("tr[data-reason=missing_field]")
    assert number(page.inner_text("[data-metric=dead-letters]")) == str(metric(site, "meterline_dead_letters"))
    cookies = {c["name"]: c for c in context.cookies()}
    session = cookies["meterline_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax" and session["path"] == "/ui"
    assert site.keys["admin"] not in session["value"]  # only the key's id is in the cookie
    # live: more events arrive; the page (not reloaded) shows them after its next refresh
    with site.client() as c:
        ingest(c, [event(f"live{i}", "acme", "request", "2026-03-01T11:00:00Z") for i in range(3)])
    deadline = time.monotonic() + 30
    while number(page.inner_text("tr[data-outcome=accepted] td:nth-child(2)")) != "10":
        assert time.monotonic() < deadline, "the on-call view did not refresh itself"
        page.wait_for_timeout(250)
    page.screenshot(path=str(shots_dir(tmp_path) / "oncall-live.png"), full_page=True)
    context.close()
    assert errors == []


def test_oncall_renders_at_desktop_and_phone_width_without_errors(site: Site, browser: Any, tmp_path: Path) -> None:
    assert each_width(browser, site, "/ui/oncall", "oncall", shots_dir(tmp_path)) == []


def test_signed_out_pages_send_to_sign_in_and_a_wrong_key_is_refused(site: Site, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page()
    errors = browser_errors(page)
    page.goto(f"{site.url}/ui/oncall?x=1")
    assert page.url.startswith(f"{site.url}/ui/sign-in?next=")
    page.fill("#key", "ml_0000_not-a-key")
    page.click("button[type=submit]")
    assert "unknown or revoked" in page.inner_text("[role=alert]")
    page.fill("#key", site.keys["ingest"])  # an ingest-only key may not read
    page.click("button[type=submit]")
    assert "scope" in page.inner_text("[role=alert]")
    page.screenshot(path=str(shots_dir(tmp_path) / "sign-in-refused.png"))
    page.fill("#key", site.keys["read"])
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert page.url == f"{site.url}/ui/oncall?x=1"  # back where it was sent from
    page.close()
    assert [e for e in errors if "401" not in e and "403" not in e] == []


def test_state_changing_forms_need_the_csrf_token_from_this_origin(site: Site) -> None:
    c, csrf = signed_in_client(site)
    try:
        forged = c.post("/ui/sign-out", data={"next": "/ui/"})
        assert forged.status_code == 403 and "CSRF" in forged.text
        wrong = c.post("/ui/sign-out", data={"csrf": csrf[:-2] + "xx"})
        assert wrong.status_code == 403
        cross = c.post("/ui/sign-out", data={"csrf": csrf}, headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403
        assert c.get("/ui/oncall").status_code == 200  # still signed in after every forged attempt
        ok = c.post("/ui/sign-out", data={"csrf": csrf}, headers={"Origin": site.url})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/sign-in"
        assert c.get("/ui/oncall").status_code == 303  # signed out
    finally:
        c.close()


def test_the_sign_in_form_itself_needs_its_token(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=30) as c:
        r = c.post("/ui/sign-in", data={"key": site.keys["admin"]})
        assert r.status_code == 403 and "meterline_session" not in r.headers.get("set-cookie", "")


def test_a_revoked_key_ends_its_sessions_and_a_forged_cookie_is_ignored(site: Site) -> None:
    with site.client() as admin:
        created = post(admin, "/api/v1/keys", {"scopes": ["read"], "name": "short-lived"})
    c, _ = signed_in_client_with(site, created["key"])
    try:
        assert c.get("/ui/oncall").status_code == 200
        with site.client() as admin:
            assert admin.delete(f"/api/v1/keys/{created['id']}").status_code == 204
        assert c.get("/ui/oncall").status_code == 303
    finally:
        c.close()
    with httpx.Client(base_url=site.url, timeout=30, cookies={"meterline_session": "eyJrIjoiYWRtaW4ifQ.x.y"}) as c:
        assert c.get("/ui/oncall").status_code == 303


def test_an_open_redirect_through_next_is_not_followed(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=30) as c:
        for target in ("https://evil.example/ui/", "//evil.example/ui/", "/api/v1/keys", "/ui\\@evil"):
            token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/sign-in").text)
            assert token is not None
            r = c.post("/ui/sign-in", data={"csrf": token.group(1), "key": site.keys["read"], "next": target})
            assert r.status_code == 303 and r.headers["location"] == "/ui/", target


def test_pages_send_security_headers_and_entry_urls_lead_to_the_dashboard(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=30) as c:
        for path in ("/", "/dashboard", "/ui"):
            r = c.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/ui/"
        r = c.get("/ui/sign-in")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
        assert c.get("/ui/static/vendor/htmx/LICENSE").status_code == 200
        missing = c.get("/ui/no-such-view")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")


def signed_in_client_with(site: Site, secret: str) -> tuple[httpx.Client, str]:
    extra = Site(site.url, site.clock, {**site.keys, "_": secret})
    return signed_in_client(extra, "_")


def test_the_first_and_last_bars_are_drawn_whole(site: Site, browser: Any, tmp_path: Path) -> None:
    """A bar chart's time axis reaches half a period past its first and last periods (a bar is
    centred on its period's start): today's bar, usually the last, is not cut in half at the
    plot's edge. Read from the drawn uPlot chart, at desktop width."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        errors = browser_errors(page)
        sign_in(page, site, "admin", "/ui/executive?from=2026-02-20&to=2026-03-01")
        page.wait_for_selector("figure[data-chart] .uplot")
        page.screenshot(path=str(shots_dir(tmp_path) / "executive-bars.png"))
        drawn = page.evaluate(
            """() => [...document.querySelectorAll("figure[data-chart]")].map((f) => {
                 const d = JSON.parse(document.getElementById(f.dataset.chart + "-data").textContent);
                 const x = f._plot.scales.x;
                 return [d.kind, d.x[0], d.x[d.x.length - 1], x.min, x.max];
               })"""
        )
        bars = [row for row in drawn if row[0] == "bars"]
        assert bars, drawn
        for _, first, last, low, high in bars:
            assert low == first - 43_200 and high == last + 43_200, drawn  # days: half a day each side
        page.goto(f"{site.url}/ui/executive?grain=month&from=2025-04-01&to=2026-03-31")
        page.wait_for_selector("figure[data-chart] .uplot")
        page.screenshot(path=str(shots_dir(tmp_path) / "executive-bars-months.png"))
        assert errors == []
    finally:
        page.close()


def test_the_executive_tables_show_every_column_at_desktop_width(site: Site, browser: Any) -> None:
    """At 1280 px no card of the executive view hides a column of its table behind a scroll
    bar: feature adoption's four columns (its numbers at the right) have a card across the page,
    not a quarter of it. (At phone width wide tables scroll inside their cards, by design.)"""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        sign_in(page, site, "admin", "/ui/executive?from=2026-02-20&to=2026-03-01")
        hidden = page.evaluate(
            """() => [...document.querySelectorAll("section.card")]
                 .filter((c) => c.querySelector("table") && c.scrollWidth > c.clientWidth)
                 .map((c) => c.id || c.querySelector("h2").textContent)"""
        )
        assert hidden == []
        assert page.locator("#adoption tr[data-feature] td.n").first.is_visible()
    finally:
        page.close()


def test_every_page_names_itself_once_in_its_title(site: Site) -> None:
    """The browser tab reads "<page> · meterline": the sign-in page and an error page say what
    they are (an error its status and code, as its heading does), never "meterline · meterline"."""
    with httpx.Client(base_url=site.url, timeout=30) as c:
        assert _title(c.get("/ui/sign-in").text) == "Sign in · meterline"
    c, _ = signed_in_client(site)
    try:
        assert _title(c.get("/ui/executive").text) == "Executive · meterline"
        bad_zone = c.get("/ui/executive?tz=Mars/Base")
        assert bad_zone.status_code == 400 and _title(bad_zone.text) == "400: invalid_timezone · meterline"
        missing = c.get("/ui/customers/no-such-customer")
        assert missing.status_code == 404 and _title(missing.text) == "404: customer_not_found · meterline"
    finally:
        c.close()


def _title(html: str) -> str:
    found = re.search(r"<title>(.*?)</title>", html, re.S)
    assert found is not None
    return found.group(1).strip()
