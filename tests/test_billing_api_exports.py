"""Showback report, CSV/JSON-lines exports, the server's scheduler and the CLI billing run."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
from conftest import Api, Server, build_api
from test_billing_api import PLAN, add_customer, calls, gb, get, move_to, ok, post, run, setup_billing, subscribe
from test_ingest_api import assert_problem

REGIONAL = {
    **PLAN,
    "cards": [
        *PLAN["cards"][:2],
        {
            "key": "egress",
            "name": "Egress",
            "meter": "api_calls",
            "groupBy": "region",
            "groups": {"eu": {"model": "per_unit", "unitPrice": "0.02"}},
            "model": {"model": "per_unit", "unitPrice": "0.01"},
        },
    ],
}


def billed(tmp_path: Path) -> tuple[Api, object]:
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    setup_billing(api, REGIONAL)
    add_customer(api, "bravo")
    subscribe(api)
    subscribe(api, customer="bravo")
    calls(api, "a1", "acme", "2026-03-01T10:00:00Z", 1500, region="eu")
    calls(api, "a2", "acme-eu", "2026-03-01T10:00:00Z", 500, region="us")
    calls(api, "b1", "bravo", "2026-03-01T10:00:00Z", 300, region="us")
    return api, gen


def test_showback_report_per_customer_and_group_by_dimension(tmp_path: Path) -> None:
    api, gen = billed(tmp_path)
    try:
        q = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
        rep = ok(get(api, "/api/v1/billing/report", **q))
        rows = [(r["customer"], r["card"], r.get("group"), r.get("quantity"), r["amount"]) for r in rep["rows"]]
        assert rows == [
            ("acme", "platform", None, None, "49.00"),
            ("acme", "api", None, "2000", "10.00"),
            ("acme", "egress", {"region": "eu"}, "1500", "30.00"),
            ("acme", "egress", {"region": "us"}, "500", "5.00"),
            ("bravo", "platform", None, None, "49.00"),
            ("bravo", "api", None, "300", "0.00"),
            ("bravo", "egress", {"region": "eu"}, "0", "0.00"),
            ("bravo", "egress", {"region": "us"}, "300", "3.00"),
        ]
        totals = {(t.get("customer"), t["currency"]): t["amount"] for t in rep["totals"]}
        assert totals == {("acme", "USD"): "94.00", ("bravo", "USD"): "52.00", (None, "USD"): "146.00"}
        split = ok(get(api, "/api/v1/billing/report", **q, customer="acme", groupBy="region"))
        api_rows = [(r.get("group"), r["quantity"], r["amount"]) for r in split["rows"] if r["card"] == "api"]
        assert api_rows == [({"region": "eu"}, "1500", "7.50"), ({"region": "us"}, "500", "2.50")]
        half = ok(get(api, "/api/v1/billing/report", **{**q, "to": "2026-03-16T12:00:00Z"}, customer="bravo"))
        assert half["rows"][0]["amount"] == "24.50"  # the flat fee prorated to the half month asked for
        text = get(api, "/api/v1/billing/report", **q, format="csv").text
        assert text.splitlines()[0].startswith("customer,plan,version,currency") and len(text.splitlines()) == 9
        assert_problem(get(api, "/api/v1/billing/report", **{**q, "to": "2026-03-01T00:00:30Z"}), 400, "unaligned_time")
        assert_problem(get(api, "/api/v1/billing/report", **{"from": q["from"]}), 400, "invalid_range")
        assert ok(get(api, "/api/v1/invoices"))["items"] == []  # nothing stored
    finally:
        gen.close()  # type: ignore[attr-defined]


def test_invoice_csv_and_period_exports(tmp_path: Path) -> None:
    api, gen = billed(tmp_path)
    try:
        gb(api, "s1", "acme", "2026-03-01T10:00:00Z", "2")
        move_to(api, "2026-04-01T00:01:00Z")
        assert run(api)["created"] == ["INV-000001", "INV-000002"]
        ok(post(api, "/api/v1/invoices/INV-000002/void", {"reason": "duplicate account"}))
        lines = list(csv.DictReader(io.StringIO(get(api, "/api/v1/invoices/INV-000001/lines.csv").text)))
        assert [(r["kind"], r["name"], r["quantity"], r["amount"]) for r in lines] == [
            ("flat", "Platform fee", "", "49.00"),
            ("usage", "API calls", "2000", "10.00"),
            ("usage", "Egress (region=eu)", "1500", "30.00"),
            ("usage", "Egress (region=us)", "500", "5.00"),
        ]
        assert lines[1]["steps"] == "tier 0: 1000 x 0 = 0; tier 1: 1000 x 0.01 = 10.00"
        q = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
        jsonl = get(api, "/api/v1/billing/export", **q).content.splitlines()
        records = [msgspec.json.decode(line) for line in jsonl]
        assert [(r["status"], r["invoice"]["number"]) for r in records] == [
            ("finalized", "INV-000001"),
            ("voided", "INV-000002"),
        ]
        assert msgspec.json.encode(records[0]["invoice"]) == msgspec.json.encode(
            msgspec.json.decode(get(api, "/api/v1/invoices/INV-000001").content)
        )
        rows = list(csv.DictReader(io.StringIO(get(api, "/api/v1/billing/export", **q, format="csv").text)))
        assert {(r["invoice"], r["status"], r["voidReason"]) for r in rows} == {
            ("INV-000001", "finalized", ""),
            ("INV-000002", "voided", "duplicate account"),
        }
        assert get(api, "/api/v1/billing/export", **{**q, "from": "2026-04-01T00:00:00Z"}).content == b""
        status = ok(get(api, "/api/v1/invoices/INV-000002/status"))
        assert (status["status"], status["voidReason"]) == ("voided", "duplicate account")
    finally:
        gen.close()  # type: ignore[attr-defined]


def test_the_server_scheduler_finalizes_due_periods(tmp_path: Path) -> None:
    gen = build_api(tmp_path, billing={"scheduler_interval": 0.05})
    api = next(gen)
    try:
        setup_billing(api)
        subscribe(api)
        move_to(api, "2026-04-01T00:01:00Z")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not ok(get(api, "/api/v1/invoices"))["items"]:
            time.sleep(0.05)
        assert [i["number"] for i in ok(get(api, "/api/v1/invoices"))["items"]] == ["INV-000001"]
        time.sleep(0.3)  # more ticks change nothing
        assert len(ok(get(api, "/api/v1/invoices"))["items"]) == 1
    finally:
        gen.close()


def test_cli_billing_run_on_the_data_dir(tmp_path: Path) -> None:
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    setup_billing(api)
    sub = subscribe(api)
    ok(post(api, f"/api/v1/billing/subscriptions/{sub['id']}/cancel", {"at": "2026-04-01T00:00:00Z"}))
    calls(api, "a1", "acme", "2026-03-01T10:00:00Z", 1001)
    gen.close()
    command = [sys.executable, "-m", "meterline.cli.main", "billing", "run", "--data-dir", str(api.data_dir)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "1 invoices finalized" in first.stdout and "INV-000001" in first.stdout
    again = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and msgspec.json.decode(again.stdout)["created"] == []


def test_cli_billing_run_through_a_running_server(server: Server) -> None:
    c = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30)
    spec = {"slug": "api_calls", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.calls"}
    assert c.post("/api/v1/meters", json=spec).status_code == 201
    assert c.post("/api/v1/customers", json={"key": "acme"}).status_code == 201
    assert c.post("/api/v1/billing/plans", json=PLAN).status_code == 201
    assert c.post("/api/v1/billing/plans/pro/versions/1/publish").status_code == 400  # storage_gb is no meter yet
    storage = {"slug": "storage_gb", "eventType": "storage", "aggregation": "SUM", "valueProperty": "$.gb"}
    assert c.post("/api/v1/meters", json=storage).status_code == 201
    assert c.post("/api/v1/billing/plans/pro/versions/1/publish").status_code == 200
    body = {"customer": "acme", "plan": "pro", "start": "2026-01-01T00:00:00Z"}
    sub = c.post("/api/v1/billing/subscriptions", json=body).json()
    assert (
        c.post(f"/api/v1/billing/subscriptions/{sub['id']}/cancel", json={"at": "2026-02-01T00:00:00Z"}).status_code
        == 200
    )
    command = [sys.executable, "-m", "meterline.cli.main", "billing", "run", "--url", server.url, "--json"]
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, "METERLINE_API_KEY": server.key}
    )
    assert out.returncode == 0, out.stderr
    assert msgspec.json.decode(out.stdout)["created"] == ["INV-000001"]
    listing = [
        sys.executable,
        "-m",
        "meterline.cli.main",
        "billing",
        "invoice",
        "INV-000001",
        "--format",
        "csv",
        "--url",
        server.url,
        "--api-key",
        server.key,
    ]
    csv_out = subprocess.run(listing, capture_output=True, text=True, timeout=60)
    assert csv_out.returncode == 0 and "Platform fee" in csv_out.stdout and "49.00" in csv_out.stdout
    c.close()
