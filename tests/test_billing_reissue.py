"""A replacement invoice covers exactly its own period; adjustments go on the next regular invoice.

The rule (docs/billing.md, "Void and replace"): a replacement is priced for the voided invoice's
windows with the usage known now, less what later invoices already charged for those windows
as adjustments. Adjustments for any other window never land on a replacement.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import Api, build_api
from test_billing_api import calls, invoice, lines, move_to, ok, post, run, setup_billing, subscribe


@pytest.fixture
def bapi(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path, billing={"scheduler_enabled": False})


def reissue(api: Api, number: str, reason: str = "usage corrected") -> dict[str, Any]:
    out = ok(post(api, f"/api/v1/invoices/{number}/void", {"reason": reason, "reissue": True}))
    replacement = out["replacement"]
    assert isinstance(replacement, str)
    return dict(invoice(api, replacement))


def sums_add_up(inv: dict[str, Any]) -> None:
    own = sum(Decimal(ln["amount"]) for ln in inv["lines"] if ln["kind"] != "adjustment")
    late = sum(Decimal(ln["amount"]) for ln in inv["lines"] if ln["kind"] == "adjustment")
    assert (Decimal(inv["subtotal"]), Decimal(inv["adjustments"])) == (own, late)
    assert Decimal(inv["total"]) == own + late


def test_a_replacement_does_not_pick_up_late_usage_of_a_later_period(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    subscribe(api)
    calls(api, "m1", "acme", "2026-03-01T10:00:00Z", 1500)
    move_to(api, "2026-04-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000001"]  # March
    move_to(api, "2026-04-20T00:00:00Z")
    calls(api, "a1", "acme", "2026-04-10T10:00:00Z", 1200)
    move_to(api, "2026-05-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000002"]  # April
    calls(api, "late", "acme", "2026-04-30T23:00:00Z", 300)  # late April usage, after INV-000002
    march = reissue(api, "INV-000001")
    assert march["replaces"] == "INV-000001" and march["number"] == "INV-000003"
    assert (march["periodStart"], march["periodEnd"]) == ("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z")
    assert lines(march) == [
        ("flat", "Platform fee", "49.00", None, None),
        ("usage", "API calls", "5.00", "1500", None),
        ("usage", "Storage", "0.00", "0", None),
    ]
    assert (march["adjustments"], march["total"]) == ("0", "54.00")
    sums_add_up(march)
    move_to(api, "2026-06-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000004"]  # the next regular invoice (May) carries it
    may = invoice(api, "INV-000004")
    assert lines(may)[-1] == ("adjustment", "Adjustment: API calls", "3.00", "300", "INV-000002")
    sums_add_up(may)


def test_adjustments_the_voided_invoice_carried_go_to_the_next_regular_invoice(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    subscribe(api)
    calls(api, "m1", "acme", "2026-03-01T10:00:00Z", 1500)
    move_to(api, "2026-04-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000001"]  # March
    calls(api, "late-march", "acme", "2026-03-31T22:00:00Z", 100)
    move_to(api, "2026-05-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000002"]  # April, carrying March's adjustment
    assert lines(invoice(api, "INV-000002"))[-1] == ("adjustment", "Adjustment: API calls", "1.00", "100", "INV-000001")
    april = reissue(api, "INV-000002", "wrong address")
    assert [ln["kind"] for ln in april["lines"]] == ["flat", "usage", "usage"]  # April's own lines only
    assert april["total"] == "49.00"
    move_to(api, "2026-06-01T00:01:00Z")
    may = invoice(api, run(api)["created"][0])
    assert lines(may)[-1] == ("adjustment", "Adjustment: API calls", "1.00", "100", "INV-000001")
    move_to(api, "2026-07-01T00:01:00Z")
    june = invoice(api, run(api)["created"][0])
    assert all(ln["kind"] != "adjustment" for ln in june["lines"])  # carried once, not twice


def test_a_replacement_nets_out_adjustments_later_invoices_already_charged_for_its_period(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    subscribe(api)
    calls(api, "m1", "acme", "2026-03-01T10:00:00Z", 1500)
    move_to(api, "2026-04-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000001"]  # March: 49 + 5.00
    calls(api, "late1", "acme", "2026-03-31T22:00:00Z", 100)
    move_to(api, "2026-05-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000002"]  # April carries +1.00 for March
    calls(api, "late2", "acme", "2026-03-31T23:00:00Z", 200)  # more late March usage
    march = reissue(api, "INV-000001")  # priced with all 1800 calls: 8.00
    assert lines(march) == [
        ("flat", "Platform fee", "49.00", None, None),
        ("usage", "API calls", "8.00", "1800", None),
        ("usage", "Storage", "0.00", "0", None),
        ("adjustment", "Charged on INV-000002: API calls", "-1.00", "-100", "INV-000002"),
    ]
    assert (march["subtotal"], march["adjustments"], march["total"]) == ("57.00", "-1.00", "56.00")
    sums_add_up(march)
    # March is now billed exactly once: 56.00 here + 1.00 on INV-000002 = 49 + 8.00 for 1800 calls
    move_to(api, "2026-06-01T00:01:00Z")
    may = invoice(api, run(api)["created"][0])
    assert all(ln["kind"] != "adjustment" for ln in may["lines"])  # nothing left to adjust
    # voiding the invoice that carried the adjustment: its replacement gives the netted amount back
    april = reissue(api, "INV-000002", "wrong address")
    assert lines(april)[-1] == ("adjustment", "Charged on INV-000003: API calls", "1.00", "100", "INV-000003")
    assert april["total"] == "50.00"
    sums_add_up(april)
