"""Every dashboard view in headless Chromium against a real server with seeded data: the numbers
on the page are compared with the API's, the pages have no browser errors at desktop and phone
width, and the attacker-minded cases: another namespace, a read key trying admin actions, a
portal token trying to see another customer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from conftest import MODES
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
    serve_scale,
    shots_dir,
    sign_in,
)
from test_billing_api import REGIONAL_PLAN

MARCH = "from=2026-03-01&to=2026-03-31"
MARCH_API = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
APRIL_1 = 1_775_001_660_000_000  # 2026-04-01T00:01Z


def _seed(site: Site) -> None:
    with site.client() as c:
        for spec in (
            {"slug": "api_calls", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.calls",
             "groupBy": {"region": "$.region"}},
            {"slug": "storage_gb", "eventType": "storage", "aggregation": "SUM", "valueProperty": "$.gb"},
            {"slug": "logins", "eventType": "login", "aggregation": "COUNT"},
        ):  # fmt: skip
            post(c, "/api/v1/meters", spec)
        post(c, "/api/v1/customers", {"key": "acme", "name": "Acme", "subjectKeys": ["acme", "acme-eu"]})
        post(c, "/api/v1/customers", {"key": "globex", "name": "Globex"})
        post(c, "/api/v1/billing/plans", REGIONAL_PLAN)
        post(c, "/api/v1/billing/plans/pro/versions/1/publish", {}, 200)
        post(c, "/api/v1/billing/subscriptions", {"customer": "acme", "plan": "pro", "start": "2026-03-01T00:00:00Z"})
        post(c, "/api/v1/features", {"key": "api", "name": "API", "meterSlug": "api_calls"})
        entitlement = {
            "type": "metered",
            "featureKey": "api",
            "issueAfterReset": 5000,
            "usagePeriod": {"interval": "MONTH"},
        }
        post(c, "/api/v1/customers/acme/entitlements", entitlement)
        ingest(c, [
            event("a1", "acme", "request", "2026-03-01T10:00:00Z", calls=1500, region="eu"),
            event("a2", "acme-eu", "request", "2026-03-01T10:00:00Z", calls=500, region="us"),
            event("s1", "acme", "storage", "2026-03-01T11:00:00Z", gb="1"),
            event("g1", "globex", "request", "2026-03-01T09:00:00Z", calls=700, region="eu"),
            *(event(f"l{i}", "globex", "login", "2026-03-01T09:30:00Z") for i in range(3)),
            event("p1", "globex", "pageview", "2026-03-01T09:40:00Z"),
        ])  # fmt: skip
        ingest(c, [{"specversion": "1.0", "id": "nosubject", "source": "seed", "type": "request"}], rejected=1)
        site.clock.advance((APRIL_1 - site.clock.now_us()) / 1e6)
        created = post(c, "/api/v1/billing/runs", {}, 200)["created"]
        assert len(created) == 1
        site.data["invoice"] = c.get(f"/api/v1/invoices/{created[0]}").json()
        site.data["portal"] = post(c, "/api/v1/portal/tokens", {"subject": "acme", "allowedMeterSlugs": ["api_calls"]},
                                   200)["token"]  # fmt: skip
        site.data["portal_globex"] = post(c, "/api/v1/portal/tokens", {"subject": "globex"}, 200)["token"]


@pytest.fixture(scope="module", params=MODES)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The seeded site in each storage mode: every view holds for both."""
    if request.param == "scale":
        served: Served = serve_scale(request.getfixturevalue("scale_site"))
    else:
        served = serve(tmp_path_factory.mktemp("dashboard-views") / "data")
    try:
        _seed(served.site)
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


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    p.errors = browser_errors(p)
    yield p
    context.close()


def api_total(site: Site, meter: str, key: str = "admin", **params: Any) -> Decimal:
    with site.client(key) as c:
        r = c.get(f"/api/v1/meters/{meter}/query", params={**MARCH_API, **params})
        assert r.status_code == 200, r.text
        return sum((Decimal(str(row["value"])) for row in r.json()["data"]), Decimal(0))


def shown(page: Any, selector: str) -> Decimal:
    return Decimal(number(page.inner_text(selector)))


def test_executive_shows_the_apis_usage_revenue_top_customers_and_adoption(
    site: Site, page: Any, tmp_path: Path
) -> None:
    sign_in(page, site, "read", f"/ui/executive?{MARCH}&consistency=strong")
    assert shown(page, "tr[data-meter=api_calls] [data-total]") == api_total(site, "api_calls") == 2700
    assert shown(page, "tr[data-meter=logins] [data-total]") == api_total(site, "logins") == 3
    top = page.locator("#top-usage tr[data-customer]")
    assert [top.nth(i).get_attribute("data-customer") for i in range(top.count())] == ["acme", "globex"]
    assert number(page.inner_text("#top-usage tr[data-customer=acme] td.n")) == "2000"
    invoice = site.data["invoice"]
    billed = page.inner_text("#top-billed tr[data-customer=acme] td.n")
    assert Decimal(number(billed.split()[0])) == Decimal(str(invoice["total"])) and invoice["currency"] in billed
    assert Decimal(number(page.inner_text(f"[data-currency={invoice['currency']}]").split()[0])) == Decimal(
        str(invoice["total"])
    )
    assert "2 of 2" in page.inner_text("#adoption tr[data-feature=api]")
    assert "as of ledger position" in page.inner_text("#usage-totals .fresh")
    page.locator("figure[data-chart=usage-api_calls] .u-over").hover()  # the chart is drawn: a tooltip
    assert page.locator("figure[data-chart=usage-api_calls] .chart-tip").count() == 1
    csv = httpx.get(f"{page.url}&csv=usage-api_calls", cookies=_cookies(page), timeout=30)
    assert csv.status_code == 200 and "2026-03-01T00:00:00+00:00,2700" in csv.text
    page.screenshot(path=str(shots_dir(tmp_path) / "executive-checked.png"), full_page=True)
    assert page.errors == []


def test_executive_cuts_periods_in_the_asked_time_zone(site: Site, page: Any) -> None:
    sign_in(page, site, "read", f"/ui/executive?grain=day&tz=Pacific/Kiritimati&{MARCH}")
    rows = page.locator("table[data-table=usage-api_calls] tbody tr")
    first, second = (rows.nth(i).locator("td").all_text_contents() for i in (0, 1))
    assert first == ["2026-03-01T00:00:00+14:00", "700"]  # globex at 09:00Z: 23:00 there
    assert second == ["2026-03-02T00:00:00+14:00", "2,000"]  # acme at 10:00Z: already March 2 there
    assert page.errors == []


def test_customer_drill_down_matches_the_api(site: Site, page: Any) -> None:
    sign_in(page, site, "read", f"/ui/customers/acme?{MARCH}&consistency=strong")
    subjects = {"subject": ["acme", "acme-eu"]}
    assert shown(page, "#usage tr[data-meter=api_calls] [data-total]") == api_total(site, "api_calls", **subjects)
    groups = page.inner_text("table[data-groups=api_calls]")
    assert "eu\t1,500" in groups and "us\t500" in groups
    with site.client() as c:
        value = c.get("/api/v1/customers/acme/entitlements/api/value").json()
    assert shown(page, "#entitlements tr[data-feature=api] [data-balance]") == Decimal(str(value["balance"]))
    assert site.data["invoice"]["number"] in page.inner_text("#invoices")
    assert "globex" not in page.inner_text("main").lower()
    assert page.errors == []


def test_event_explorer_filters_and_pages(site: Site, page: Any) -> None:
    sign_in(page, site, "read", "/ui/events?type=login")
    ids = page.locator("#events tbody tr[data-cursor]")
    assert ids.count() == 3 and "globex" in page.inner_text("#events")
    login_rows = {ids.nth(i).get_attribute("data-cursor") for i in range(3)}
    page.goto(f"{site.url}/ui/events?source=seed&subject=acme&from=2026-03-01T10:30")
    assert page.locator("#events tbody tr[data-cursor]").count() == 1 and "s1" in page.inner_text("#events")
    page.goto(f"{site.url}/ui/events")
    rows = page.locator("#events tbody tr[data-cursor]")
    listed = [rows.nth(i).get_attribute("data-cursor") for i in range(rows.count())]
    assert len(listed) == 8  # every accepted event (the pageview too), newest first
    # the next page starts after a row: a ledger position (embedded) or the log's cursor (scale)
    page.goto(f"{site.url}/ui/events?{urlencode({'before': listed[0]})}")
    rows = page.locator("#events tbody tr[data-cursor]")
    assert [rows.nth(i).get_attribute("data-cursor") for i in range(rows.count())] == listed[1:]
    page.goto(f"{site.url}/ui/events?{urlencode({'before': listed[0], 'type': 'login'})}")
    assert page.locator("#events tbody tr[data-cursor]").count() == 3 - (listed[0] in login_rows)
    assert page.errors == []


def test_reconciliation_traces_billed_units_to_events(site: Site, page: Any) -> None:
    path = "/ui/reconciliation?grain=month&from=2026-03-01&to=2026-03-31&consistency=strong"
    sign_in(page, site, "read", path)
    row = "table[data-meter=api_calls] tr[data-period='0']"
    assert number(page.inner_text(f"{row} [data-accepted]")) == "3"  # on the first render
    assert number(page.inner_text(f"{row} [data-metered]")) == "3"
    assert number(page.inner_text(f"{row} [data-value]")) == "2700"
    billed = sum(
        Decimal(str(u["quantity"]))
        for w in site.data["invoice"]["windows"]
        for u in w["usage"]
        if u["meter"] == "api_calls" and not u.get("group")  # the total; its groups split the same units
    )
    assert Decimal(number(page.inner_text(f"{row} [data-billed]"))) == billed
    # globex has no subscription: its 700 calls are metered, not billed
    assert billed == 2000 and Decimal(number(page.inner_text(f"{row} [data-unbilled]"))) == 700
    assert "pageview" in page.inner_text("#unmetered")
    assert "missing_field" in page.inner_text("#rejected")
    assert page.errors == []


def test_another_namespace_sees_none_of_this(site: Site, page: Any) -> None:
    sign_in(page, site, "other", "/ui/customers")
    assert "acme" not in page.inner_text("main")
    page.goto(f"{site.url}/ui/customers/acme")
    assert "customer_not_found" in page.inner_text("main")
    page.goto(f"{site.url}/ui/events")
    assert page.locator("#events tbody tr[data-cursor]").count() == 0
    page.goto(f"{site.url}/ui/executive?{MARCH}")
    assert "No meters yet" in page.inner_text("main")


def test_portal_page_shows_only_that_customers_allowed_usage(site: Site, browser: Any, tmp_path: Path) -> None:
    token = site.data["portal"]
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    errors = browser_errors(page)
    page.goto(f"{site.url}/ui/portal?token={token}")
    assert page.url == f"{site.url}/ui/portal"  # the token left the address bar
    cookie = next(c for c in context.cookies() if c["name"] == "meterline_portal")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui/portal"
    page.goto(f"{site.url}/ui/portal?{MARCH}&subject=globex&consistency=strong")
    # the page shows the token's customer (all its subjects); the portal API answers the token's
    # subject alone, as OpenMeter does: the customer's total is the admin query's
    with site.client() as admin:
        r = admin.get("/api/v1/meters/api_calls/query", params={**MARCH_API, "filterCustomerId": "acme"})
    api = sum(Decimal(str(row["value"])) for row in r.json()["data"])
    assert shown(page, "#usage tr[data-meter=api_calls] [data-total]") == api == 2000
    r = httpx.get(f"{site.url}/api/v1/portal/meters/api_calls/query", params=MARCH_API,
                  headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert {row["subject"] for row in r.json()["data"]} == {"acme"}
    text = page.inner_text("body")
    assert "storage_gb" not in text and "logins" not in text  # meters the token does not allow
    assert "globex" not in text.lower() and "Globex" not in text
    assert site.data["invoice"]["number"] in page.inner_text("#invoices")
    assert "api" in page.inner_text("#entitlements")
    page.screenshot(path=str(shots_dir(tmp_path) / "portal-phone.png"), full_page=True)
    # the dashboard is not reachable with a portal cookie
    page.goto(f"{site.url}/ui/customers/globex")
    assert page.url.startswith(f"{site.url}/ui/sign-in")
    context.close()
    assert errors == []


def test_portal_token_of_one_customer_never_shows_another(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=30) as c:
        c.get(f"/ui/portal?token={site.data['portal_globex']}")
        page = c.get(f"/ui/portal?{MARCH}&subject=acme&consistency=strong").text
        assert site.data["invoice"]["number"] not in page and "Acme" not in page
        assert re.search(r'data-meter="api_calls".*?data-total>700<', page, re.S)
    with site.client() as admin:
        post(admin, "/api/v1/portal/tokens/invalidate", {"subject": "globex"}, 204)
    with httpx.Client(base_url=site.url, timeout=30) as c:
        r = c.get(f"/ui/portal?token={site.data['portal_globex']}")
        assert r.status_code == 401 and "invalidated" in r.text
        forged = c.get("/ui/portal", cookies={"meterline_portal": site.data["portal"][:-4] + "AAAA"})
        assert forged.status_code == 401 and "2,000" not in forged.text


VIEWS = [
    ("/ui/", "overview"),
    (f"/ui/executive?{MARCH}", "executive"),
    ("/ui/oncall", "oncall"),
    ("/ui/events", "events"),
    ("/ui/customers", "customers"),
    (f"/ui/customers/acme?{MARCH}", "customer"),
    ("/ui/dead-letters", "dead-letters"),
    ("/ui/quarantine", "quarantine"),
    ("/ui/reconciliation?from=2026-01-01&to=2026-03-31", "reconciliation"),
]


@pytest.mark.parametrize(("path", "name"), VIEWS, ids=[n for _, n in VIEWS])
def test_every_view_renders_at_desktop_and_phone_width_without_errors(
    site: Site, browser: Any, tmp_path: Path, path: str, name: str
) -> None:
    assert each_width(browser, site, path, name, shots_dir(tmp_path), key="read") == []


def test_portal_renders_at_desktop_and_phone_width(site: Site, browser: Any, tmp_path: Path) -> None:
    for label, size in (("desktop", {"width": 1280, "height": 900}), ("phone", {"width": 390, "height": 844})):
        context = browser.new_context(viewport=size)
        page = context.new_page()
        errors = browser_errors(page)
        page.goto(f"{site.url}/ui/portal?token={site.data['portal']}")
        page.goto(f"{site.url}/ui/portal?{MARCH}")
        assert page.evaluate("document.documentElement.scrollWidth") <= size["width"]
        page.screenshot(path=str(shots_dir(tmp_path) / f"portal-{label}.png"), full_page=True)
        context.close()
        assert errors == []


def _cookies(page: Any) -> dict[str, str]:
    return {c["name"]: c["value"] for c in page.context.cookies()}
