"""Every view of an invoice shows the stored invoice's own times, to the microsecond.

The server's clock here moves on every reading, as a real one does, so a view that reads the
time a second time (instead of taking it from the stored invoice) shows a different instant.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from conftest import T0_US
from test_billing_api import calls, post_json
from test_billing_scheduler import _Http, billing_setup, serve

from meterline.domain.clock import FixedClock

TIMES = ("issuedAt", "periodStart", "periodEnd")


class TickingClock(FixedClock):
    """Each reading is 1.001 ms after the one before."""

    def now_us(self) -> int:
        now = super().now_us()
        self.advance(0.001001)
        return now


def test_list_status_and_exports_show_the_stored_invoice_times(tmp_path: Path) -> None:
    with serve(tmp_path, {"scheduler_enabled": False}, clock=TickingClock(T0_US)) as served:
        c = served.client
        billing_setup(served, "acme", "bravo")
        calls(_Http(served), "m1", "acme", "2026-03-01T10:00:00Z", 1500)
        served.move_to("2026-04-01T00:01:00Z")
        assert post_json(c, "/api/v1/billing/runs", {}, 200)["created"] == ["INV-000001", "INV-000002"]
        body = {"reason": "usage corrected", "reissue": True}
        assert post_json(c, "/api/v1/invoices/INV-000001/void", body, 200)["replacement"] == "INV-000003"
        items = c.get("/api/v1/invoices").json()["items"]
        assert [i["number"] for i in items] == ["INV-000001", "INV-000002", "INV-000003"]
        stored = {i["number"]: c.get(f"/api/v1/invoices/{i['number']}").json() for i in items}
        assert len({s["issuedAt"] for s in stored.values()}) == 2  # one run, one re-issue
        for item in items:
            invoice = stored[item["number"]]
            assert {t: item[t] for t in TIMES} == {t: invoice[t] for t in TIMES}
            status = c.get(f"/api/v1/invoices/{item['number']}/status").json()
            assert {t: status[t] for t in TIMES} == {t: invoice[t] for t in TIMES}
        export = c.get("/api/v1/billing/export", params={"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z",
                                                          "format": "csv"})  # fmt: skip
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert {r["invoice"] for r in rows} == set(stored)
        for row in rows:
            assert {t: row[t] for t in TIMES} == {t: stored[row["invoice"]][t] for t in TIMES}
