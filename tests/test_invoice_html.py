"""The printable HTML invoice, served by the real app over HTTP and opened in headless Chromium.

The browser is Debian's ``/usr/bin/chromium`` driven by Playwright. If it is missing the test
FAILS (it does not skip): ``./run test`` installs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import T0_US, free_port, make_key
from test_billing_api import REGIONAL_PLAN, calls, gb, post_json

from meterline.api.app import create_app
from meterline.config import load_config
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


class Served:
    def __init__(self, url: str, key: str, clock: FixedClock) -> None:
        self.url, self.key, self.clock = url, key, clock
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    data_dir = tmp_path / "data"
    key = make_key(data_dir, ["admin"])
    port = free_port()
    config = load_config(
        None, {"storage": {"data_dir": data_dir, "fsync": "normal"}, "billing": {"scheduler_enabled": False}}
    )
    clock = FixedClock(T0_US)
    server = uvicorn.Server(uvicorn.Config(create_app(config, clock), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    served = Served(f"http://127.0.0.1:{port}", key, clock)
    yield served
    served.client.close()
    server.should_exit = True
    thread.join(timeout=10)


def test_html_invoice_in_headless_chromium_shows_every_line_the_period_and_totals(
    served: Served, tmp_path: Path
) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: install Debian's chromium (./run test does) to run this test"
    from playwright.sync_api import sync_playwright

    c = served.client
    number = billed_invoice(served)
    invoice = c.get(f"/api/v1/invoices/{number}").json()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(extra_http_headers={"Authorization": f"Bearer {served.key}"})
            response = page.goto(f"{served.url}/api/v1/invoices/{number}/html")
            assert response is not None and response.status == 200
            shot = tmp_path / "invoice.png"
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text("body")
            rows = page.locator("tr.line").count()
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert rows == len(invoice["lines"]) == 5
    for line in invoice["lines"]:
        assert line["name"] in text
    for shown in ("$49.00", "$10.00", "$30.00", "$5.00", "$0.50", "1,500", "2,000"):
        assert shown in text, shown
    assert "Period: Mar 1, 2026 \u2013 Mar 31, 2026" in text
    assert f"Invoice {number}" in text and "<script>" in text  # the customer's name is escaped, not markup
    assert "Subtotal\t$94.50" in text and "Total\t$94.50" in text
    assert "Credit welcome\t-$20.00" in text and "Amount due\t$74.50" in text


def billed_invoice(served: Served) -> str:
    c = served.client
    api = _HttpApi(served)
    for spec in (
        {"slug": "api_calls", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.calls",
         "groupBy": {"region": "$.region"}},
        {"slug": "storage_gb", "eventType": "storage", "aggregation": "SUM", "valueProperty": "$.gb"},
    ):  # fmt: skip
        post_json(c, "/api/v1/meters", spec)
    customer = {"key": "acme", "name": "Acme <script>alert(1)</script>", "subjectKeys": ["acme", "acme-eu"]}
    post_json(c, "/api/v1/customers", customer)
    post_json(c, "/api/v1/billing/plans", REGIONAL_PLAN)
    post_json(c, "/api/v1/billing/plans/pro/versions/1/publish", {}, 200)
    post_json(c, "/api/v1/billing/subscriptions", {"customer": "acme", "plan": "pro", "start": "2026-03-01T00:00:00Z"})
    post_json(c, "/api/v1/customers/acme/credits", {"key": "welcome", "currency": "USD", "amount": "20"})
    calls(api, "a1", "acme", "2026-03-01T10:00:00Z", 1500, region="eu")
    calls(api, "a2", "acme-eu", "2026-03-01T10:00:00Z", 500, region="us")
    gb(api, "s1", "acme", "2026-03-01T11:00:00Z", "1")
    served.clock.advance((1_775_001_660_000_000 - served.clock.now_us()) / 1e6)  # 2026-04-01T00:01Z
    created: list[str] = post_json(c, "/api/v1/billing/runs", {}, 200)["created"]
    assert len(created) == 1
    return created[0]


class _HttpApi:
    """Just enough of the ``Api`` helper for ``calls``/``gb`` over real HTTP."""

    def __init__(self, served: Served) -> None:
        self._c = served.client

    def post_events(self, events: object) -> httpx.Response:
        import msgspec

        headers = {"Content-Type": "application/cloudevents-batch+json"}
        return self._c.post("/api/v1/events", content=msgspec.json.encode(events), headers=headers)
