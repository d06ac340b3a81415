"""Billing views hold for the largest amounts the plan and event grammar allow.

Prices and quantities each take up to 38 digits, so an invoice line can carry far more digits than
Python's default decimal context (28). The stored invoice is exact; its views must be too.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import Server, start_server

QUANTITY = "123456789012345678.123"
PRICE = "99999999999999999999999999999999999"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(Path(tmp_path_factory.mktemp("hostile-billing")) / "data")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=60) as c:
        yield c


def _last_month() -> datetime:
    first = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1)


def test_an_invoice_with_more_digits_than_the_default_decimal_context_renders(client: httpx.Client) -> None:
    start = _last_month()
    meter = {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}
    assert client.post("/api/v1/meters", json=meter).status_code == 201
    assert client.post("/api/v1/customers", json={"key": "big"}).status_code == 201
    card = {"key": "api", "name": "API", "meter": "tokens", "model": {"model": "per_unit", "unitPrice": PRICE}}
    plan = {"plan": "huge", "name": "Huge", "currency": "USD", "cards": [card]}
    assert client.post("/api/v1/billing/plans", json=plan).status_code == 201
    assert client.post("/api/v1/billing/plans/huge/versions/1/publish").status_code == 200
    sub = {"customer": "big", "plan": "huge", "start": start.isoformat().replace("+00:00", "Z")}
    assert client.post("/api/v1/billing/subscriptions", json=sub).status_code == 201
    event = {
        "specversion": "1.0",
        "id": "big-1",
        "source": "hostile",
        "type": "prompt",
        "subject": "big",
        "time": (start + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
        "data": {"tokens": QUANTITY},
    }
    assert client.post("/api/v1/events", json=[event]).status_code == 204
    run = client.post("/api/v1/billing/runs", json={})
    assert run.status_code == 200, run.text
    (number,) = run.json()["created"]
    total = client.get(f"/api/v1/invoices/{number}").json()["total"]
    assert len(total.replace(".", "")) > 28

    html = client.get(f"/api/v1/invoices/{number}/html")

    assert html.status_code == 200, html.text
    assert "12,345,678,901,234,567" in html.text  # the quantity, grouped by the locale
    assert client.get(f"/api/v1/invoices/{number}/lines.csv").status_code == 200
