"""Property: for random plans and usage, a billing run through the app finalizes an invoice whose
total is the sum of its lines and equals the naive reference; running again changes nothing.

Examples are few by default (each builds an app on a fresh SQLite file); raise them with
``METERLINE_BILLING_EXAMPLES=200``.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from fractions import Fraction
from pathlib import Path

import msgspec
from conftest import build_api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_billing_api import get, move_to, ok, post, run
from test_billing_property import PERIOD, REGIONS, plans, reference_total

from meterline.domain.billing import PlanVersion, UsageKey, group_key, price_period
from meterline.domain.periods import Period

EXAMPLES = int(os.environ.get("METERLINE_BILLING_EXAMPLES", "12"))
END = datetime(2026, 4, 1, tzinfo=UTC)
amounts = st.dictionaries(
    st.tuples(st.sampled_from(["meter_0", "meter_1"]), st.sampled_from([*REGIONS, "af"])),
    st.integers(1, 400),
    max_size=8,
)


def usage_of(quantities: dict[tuple[str, str], int]) -> dict[UsageKey, D]:
    usage: dict[UsageKey, D] = {}
    for meter in ("meter_0", "meter_1"):
        usage[(meter, None)] = D(sum(q for (m, _), q in quantities.items() if m == meter))
        for region in (*REGIONS, "af"):
            usage[(meter, group_key("region", region))] = D(quantities.get((meter, region), 0))
    return usage


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans(), amounts, st.integers(1, 31 * 24), st.integers(0, 3000))
def test_invoice_total_is_the_sum_of_lines_and_the_reference_and_reruns_change_nothing(
    plan: PlanVersion, quantities: dict[tuple[str, str], int], hours: int, credit: int
) -> None:
    window = Period(END - timedelta(hours=hours), END)
    usage = usage_of(quantities)
    expected = price_period(plan, window, usage, period=Period(datetime(2026, 3, 1, tzinfo=UTC), END))
    with tempfile.TemporaryDirectory() as tmp:
        gen = build_api(Path(tmp), billing={"scheduler_enabled": False})
        api = next(gen)
        try:
            for meter in ("meter_0", "meter_1"):
                spec = {"slug": meter, "eventType": meter, "aggregation": "SUM", "valueProperty": "$.v"}
                ok(api.create_meter(**spec, groupBy={"region": "$.region"}), 201)
            ok(post(api, "/api/v1/customers", {"key": "c", "subjectKeys": ["c1", "c2"]}), 201)
            ok(post(api, "/api/v1/billing/plans", msgspec.to_builtins(plan)), 201)
            ok(post(api, "/api/v1/billing/plans/p/versions/1/publish"))
            move_to(api, "2026-04-01T00:00:00Z")
            events = [
                {"specversion": "1.0", "id": f"{m}-{r}", "source": "p", "type": m, "subject": f"c{len(r) % 2 + 1}",
                 "time": window.start.isoformat(), "data": {"v": q, "region": r}}
                for (m, r), q in quantities.items()
            ]  # fmt: skip
            if events:
                assert api.post_events(events).status_code in (200, 202, 204)
            if credit:
                grant = {"key": "g", "currency": plan.currency, "amount": str(credit)}
                ok(post(api, "/api/v1/customers/c/credits", grant), 201)
            start = window.start.isoformat()
            ok(post(api, "/api/v1/billing/subscriptions", {"customer": "c", "plan": "p", "start": start}), 201)
            move_to(api, "2026-04-01T00:01:00Z")
            report = run(api)
            if expected.unpriced:
                assert report["created"] == [] and report["failed"][0]["code"] == "unpriced_usage"
                return
            assert report["created"] == ["INV-000001"], report
            raw = get(api, "/api/v1/invoices/INV-000001").content
            inv = msgspec.json.decode(raw)
            total = sum((D(line["amount"]) for line in inv["lines"]), D(0))
            assert D(inv["total"]) == total
            assert Fraction(D(inv["total"])) == reference_total(plan, usage, _shifted(window))
            credits = sum((D(line["amount"]) for line in inv["credits"]), D(0))
            assert D(inv["amountDue"]) == D(inv["total"]) + credits >= 0
            assert -credits == min(D(credit), max(total, D(0)))
            assert run(api)["created"] == []
            assert get(api, "/api/v1/invoices/INV-000001").content == raw
            assert len(ok(get(api, "/api/v1/invoices"))["items"]) == 1
        finally:
            gen.close()


def _shifted(window: Period) -> Period:
    """The same window length inside the reference's period (2024-03, also 31 days)."""
    return Period(PERIOD.end - (window.end - window.start), PERIOD.end)
