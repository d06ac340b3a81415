"""Plans, subscriptions, billing runs and invoices through the app (golden end to end)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pytest
from conftest import MODES, Api, build_api, mode_api
from test_ingest_api import assert_problem

from meterline.domain.clock import to_us

PLAN: dict[str, Any] = {
    "plan": "pro",
    "name": "Pro",
    "currency": "USD",
    "cards": [
        {"key": "platform", "name": "Platform fee", "model": {"model": "flat", "amount": "49"}},
        {
            "key": "api",
            "name": "API calls",
            "meter": "api_calls",
            "model": {"model": "graduated", "tiers": [{"upTo": "1000", "unitPrice": "0"}, {"unitPrice": "0.01"}]},
        },
        {
            "key": "storage",
            "name": "Storage",
            "meter": "storage_gb",
            "model": {"model": "per_unit", "unitPrice": "0.5"},
            "maximum": "100",
        },
    ],
}


REGIONAL_PLAN: dict[str, Any] = {
    **PLAN,
    "cards": [
        *PLAN["cards"],
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


class EventSink(Protocol):
    def post_events(self, events: object) -> Any: ...


def post_json(client: Any, path: str, body: Any, status: int = 201) -> Any:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


def us(text: str) -> int:
    return to_us(datetime.fromisoformat(text.replace("Z", "+00:00")))


def move_to(api: Api, text: str) -> None:
    api.clock.advance((us(text) - api.clock.now_us()) / 1_000_000)


def ev(id_: str, subject: str, time: str, type_: str = "request", **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id_,
        "source": "t",
        "type": type_,
        "subject": subject,
        "time": time,
        "data": data,
    }


def calls(api: EventSink, id_: str, subject: str, time: str, n: int, region: str = "eu") -> None:
    r = api.post_events([ev(id_, subject, time, calls=n, region=region)])
    assert r.status_code in (200, 202, 204), r.text


def gb(api: EventSink, id_: str, subject: str, time: str, amount: str) -> None:
    r = api.post_events([ev(id_, subject, time, "storage", gb=amount)])
    assert r.status_code in (200, 202, 204), r.text


def post(api: Api, path: str, body: Any = None) -> Any:
    return api.client.post(path, json=body if body is not None else {}, headers=api.headers())


def get(api: Api, path: str, **params: str) -> Any:
    return api.client.get(path, params=params, headers=api.headers())


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def setup_billing(api: Api, plan: dict[str, Any] | None = None, customer: str = "acme") -> None:
    """Meters, one customer with two subjects, a published plan."""
    spec = {"slug": "api_calls", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.calls"}
    ok(api.create_meter(**spec, groupBy={"region": "$.region"}), 201)
    ok(api.create_meter(slug="storage_gb", eventType="storage", aggregation="SUM", valueProperty="$.gb"), 201)
    add_customer(api, customer)
    ok(post(api, "/api/v1/billing/plans", plan or PLAN), 201)
    ok(post(api, "/api/v1/billing/plans/pro/versions/1/publish"))


def add_customer(api: Api, key: str, tz: str = "UTC") -> None:
    body = {"key": key, "name": key.title() + " Inc", "subjectKeys": [key, f"{key}-eu"], "timezone": tz}
    ok(post(api, "/api/v1/customers", body), 201)


def subscribe(api: Api, customer: str = "acme", start: str = "2026-03-01T00:00:00Z", **extra: Any) -> Any:
    return ok(
        post(api, "/api/v1/billing/subscriptions", {"customer": customer, "plan": "pro", "start": start, **extra}), 201
    )


def run(api: Api) -> Any:
    return ok(post(api, "/api/v1/billing/runs"))


def invoice(api: Api, number: str) -> Any:
    return ok(get(api, f"/api/v1/invoices/{number}"))


def lines(inv: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(ln["kind"], ln["name"], ln["amount"], ln.get("quantity"), ln.get("references")) for ln in inv["lines"]]


@pytest.fixture(params=MODES)
def bapi(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app in each storage mode: these tests hold for both."""
    yield from mode_api(request, tmp_path, billing={"scheduler_enabled": False})


def test_plan_versions_are_drafts_until_published_and_then_never_change(bapi: Api) -> None:
    api = bapi
    ok(api.create_meter(slug="api_calls", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
    ok(api.create_meter(slug="storage_gb", eventType="storage", aggregation="SUM", valueProperty="$.gb"), 201)
    add_customer(api, "acme")
    draft = ok(post(api, "/api/v1/billing/plans", PLAN), 201)
    assert (draft["version"], draft["status"]) == (1, "draft")
    edited = {**PLAN, "minimumCommitment": "60"}
    assert ok(api.client.put("/api/v1/billing/plans/pro/versions/1", json=edited, headers=api.headers()))[
        "minimumCommitment"
    ]
    assert_problem(post(api, "/api/v1/billing/subscriptions", {"customer": "acme", "plan": "pro", "version": 1}), 409,
                   "plan_not_published")  # fmt: skip
    published = ok(post(api, "/api/v1/billing/plans/pro/versions/1/publish"))
    assert published["status"] == "published" and published["publishedAt"] == "2026-03-01T12:00:00Z"
    assert_problem(api.client.put("/api/v1/billing/plans/pro/versions/1", json=PLAN, headers=api.headers()), 409,
                   "plan_version_published")  # fmt: skip
    assert_problem(post(api, "/api/v1/billing/plans/pro/versions/1/publish"), 409, "plan_version_published")
    copy = ok(post(api, "/api/v1/billing/plans/pro/versions/1/copy"), 201)
    assert (copy["version"], copy["status"], copy["minimumCommitment"]) == (2, "draft", "60")
    assert_problem(post(api, "/api/v1/billing/plans", {**PLAN, "version": 2}), 409, "plan_version_exists")
    bad = {**PLAN, "plan": "bad", "currency": "XXX1", "cards": []}
    assert len(assert_problem(post(api, "/api/v1/billing/plans", bad), 400, "invalid_plan")["problems"]) == 2
    ghost = {**PLAN, "plan": "ghost", "cards": [{"key": "g", "name": "G", "meter": "nope",
                                                 "model": {"model": "per_unit", "unitPrice": "1"}}]}  # fmt: skip
    ok(post(api, "/api/v1/billing/plans", ghost), 201)
    assert_problem(post(api, "/api/v1/billing/plans/ghost/versions/1/publish"), 400, "invalid_plan")
    listing = ok(get(api, "/api/v1/billing/plans/pro"))
    assert listing["latestPublished"] == 1 and [v["version"] for v in listing["versions"]] == [1, 2]
    assert_problem(get(api, "/api/v1/billing/plans/pro/versions/9"), 404, "plan_not_found")
    assert_problem(get(api, "/api/v1/billing/plans/none"), 404, "plan_not_found")


def test_subscription_errors_are_problems(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    assert_problem(
        post(api, "/api/v1/billing/subscriptions", {"customer": "nobody", "plan": "pro"}), 404, "customer_not_found"
    )
    unaligned = {"customer": "acme", "plan": "pro", "start": "2026-03-01T00:00:30Z"}
    assert_problem(post(api, "/api/v1/billing/subscriptions", unaligned), 400, "unaligned_time")
    bad = {"customer": "acme", "plan": "pro", "anchorDay": 32, "zone": "Mars/Base"}
    assert (
        len(assert_problem(post(api, "/api/v1/billing/subscriptions", bad), 400, "invalid_subscription")["problems"])
        == 2
    )
    sub = subscribe(api)
    assert (sub["zone"], sub["anchorDay"], sub["version"], sub["status"]) == ("UTC", 1, 1, "active")
    assert_problem(
        post(api, "/api/v1/billing/subscriptions", {"customer": "acme", "plan": "pro"}), 409, "subscription_overlaps"
    )
    assert_problem(get(api, "/api/v1/billing/subscriptions/nope"), 404, "subscription_not_found")
    assert_problem(get(api, "/api/v1/invoices/INV-9"), 404, "invoice_not_found")
    assert_problem(post(api, f"/api/v1/billing/subscriptions/{sub['id']}/cancel", {"at": "2026-02-01T00:00:00Z"}), 400,
                   "invalid_subscription")  # fmt: skip


def test_golden_subscribe_ingest_preview_run_and_late_usage_adjustment(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    subscribe(api)
    calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 1500)
    calls(api, "c2", "acme-eu", "2026-03-01T11:00:00Z", 500, region="us")
    calls(api, "c0", "someone-else", "2026-03-01T11:00:00Z", 999)
    gb(api, "s1", "acme", "2026-03-01T11:30:00Z", "10.5")

    preview = ok(get(api, "/api/v1/customers/acme/invoice-preview"))["invoices"]
    assert len(preview) == 1 and preview[0]["number"] is None
    assert lines(preview[0]) == [
        ("flat", "Platform fee", "49.00", None, None),
        ("usage", "API calls", "10.00", "2000", None),
        ("usage", "Storage", "5.25", "10.5", None),
    ]
    assert ok(get(api, "/api/v1/invoices"))["items"] == []  # a preview stores nothing

    assert run(api)["created"] == []  # the period has not ended
    move_to(api, "2026-04-01T00:01:00Z")
    first = run(api)
    assert first["created"] == ["INV-000001"] and first["failed"] == []
    raw = get(api, "/api/v1/invoices/INV-000001")
    assert raw.headers["meterline-invoice-status"] == "finalized"
    inv = raw.json()
    assert (inv["number"], inv["customer"], inv["customerName"], inv["currency"]) == (
        "INV-000001", "acme", "Acme Inc", "USD")  # fmt: skip
    assert (inv["periodStart"], inv["periodEnd"]) == ("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z")
    assert lines(inv) == [
        ("flat", "Platform fee", "49.00", None, None),
        ("usage", "API calls", "10.00", "2000", None),
        ("usage", "Storage", "5.25", "10.5", None),
    ]
    assert (inv["subtotal"], inv["adjustments"], inv["total"], inv["amountDue"], inv["credits"]) == (
        "64.25", "0", "64.25", "64.25", [])  # fmt: skip
    api_line = inv["lines"][1]
    assert (api_line["meter"], api_line["model"], api_line["start"], api_line["end"]) == (
        "api_calls", "graduated", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z")  # fmt: skip
    assert [(s["kind"], s.get("tier"), s["units"], s["amount"]) for s in api_line["steps"]] == [
        ("tier", 0, "1000", "0"), ("tier", 1, "1000", "10.00")]  # fmt: skip
    assert inv["windows"][0]["usage"] == [
        {"meter": "api_calls", "quantity": "2000"}, {"meter": "storage_gb", "quantity": "10.5"}]  # fmt: skip

    again = run(api)
    assert again["created"] == [] and again["failed"] == []
    assert [i["number"] for i in ok(get(api, "/api/v1/invoices"))["items"]] == ["INV-000001"]

    calls(api, "late", "acme-eu", "2026-03-31T23:00:00Z", 100)  # arrives after INV-000001
    assert get(api, "/api/v1/invoices/INV-000001").content == raw.content
    preview = ok(get(api, "/api/v1/customers/acme/invoice-preview"))["invoices"][0]
    assert lines(preview)[-1] == ("adjustment", "Adjustment: API calls", "1.00", "100", "INV-000001")
    move_to(api, "2026-05-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000002"]
    second = invoice(api, "INV-000002")
    assert lines(second) == [
        ("flat", "Platform fee", "49.00", None, None),
        ("usage", "API calls", "0.00", "0", None),
        ("usage", "Storage", "0.00", "0", None),
        ("adjustment", "Adjustment: API calls", "1.00", "100", "INV-000001"),
    ]
    assert (second["subtotal"], second["adjustments"], second["total"]) == ("49.00", "1.00", "50.00")
    assert get(api, "/api/v1/invoices/INV-000001").content == raw.content  # finalized never changes
    move_to(api, "2026-06-01T00:01:00Z")
    third = invoice(api, run(api)["created"][0])
    assert [ln["kind"] for ln in third["lines"]] == ["flat", "usage", "usage"]  # adjusted once only


def test_plan_change_mid_period_prorates_and_splits_usage(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    cheaper = {**PLAN, "cards": [{**PLAN["cards"][0], "model": {"model": "flat", "amount": "31"}}, *PLAN["cards"][1:]]}
    ok(
        api.client.put("/api/v1/billing/plans/pro/versions/2", json={**cheaper, "version": 2}, headers=api.headers()),
        404,
    )
    ok(post(api, "/api/v1/billing/plans/pro/versions/1/copy"), 201)
    ok(api.client.put("/api/v1/billing/plans/pro/versions/2", json={**cheaper, "version": 2}, headers=api.headers()))
    ok(post(api, "/api/v1/billing/plans/pro/versions/2/publish"))
    sub = subscribe(api, version=1)
    calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 1500)
    change = {"plan": "pro", "version": 2, "at": "2026-03-16T00:00:00Z"}
    changed = ok(post(api, f"/api/v1/billing/subscriptions/{sub['id']}/change", change))
    assert changed["closed"]["end"] == "2026-03-16T00:00:00Z" and changed["started"]["previous"] == sub["id"]
    move_to(api, "2026-03-20T00:00:00Z")
    calls(api, "c2", "acme", "2026-03-19T10:00:00Z", 1200)
    assert run(api)["created"] == ["INV-000001"]  # the old plan's window ended at the change
    move_to(api, "2026-04-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000002"]
    old, new = invoice(api, "INV-000001"), invoice(api, "INV-000002")
    assert lines(old)[:2] == [
        ("flat", "Platform fee", "23.71", None, None),
        ("usage", "API calls", "5.00", "1500", None),
    ]
    assert old["lines"][0]["proration"] == {"coveredUs": 15 * 86_400_000_000, "periodUs": 31 * 86_400_000_000}
    assert lines(new)[:2] == [
        ("flat", "Platform fee", "16.00", None, None),
        ("usage", "API calls", "2.00", "1200", None),
    ]
    assert (old["periodStart"], new["periodStart"]) == ("2026-03-01T00:00:00Z", "2026-03-01T00:00:00Z")
    assert_problem(post(api, f"/api/v1/billing/subscriptions/{changed['started']['id']}/cancel",
                        {"at": "2026-03-20T00:00:00Z"}), 409, "period_invoiced")  # fmt: skip


def test_credits_burn_down_before_charges_and_show_as_lines_and_balance(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    subscribe(api)
    grants = [
        {"key": "promo", "currency": "USD", "amount": "20.00", "priority": 1},
        {"key": "prepaid", "currency": "USD", "amount": "100", "priority": 2},
        {"key": "old", "currency": "USD", "amount": "5", "expiresAt": "2026-03-15T00:00:00Z"},
    ]
    for g in grants:
        ok(post(api, "/api/v1/customers/acme/credits", g), 201)
    assert_problem(post(api, "/api/v1/customers/acme/credits", grants[0]), 409, "credit_grant_exists")
    bad = {"key": "x", "currency": "USD", "amount": "0.001"}
    assert_problem(post(api, "/api/v1/customers/acme/credits", bad), 400, "invalid_credit_grant")
    assert ok(get(api, "/api/v1/customers/acme/credits"))["balances"] == {"USD": "125.00"}
    move_to(api, "2026-04-01T00:01:00Z")
    inv = invoice(api, run(api)["created"][0])
    assert [(c["name"], c["amount"]) for c in inv["credits"]] == [
        ("Credit promo", "-20.00"),
        ("Credit prepaid", "-29.00"),
    ]
    assert (inv["total"], inv["amountDue"]) == ("49.00", "0.00")
    balance = ok(get(api, "/api/v1/customers/acme/credits"))
    assert balance["balances"] == {"USD": "71.00"}
    assert {g["key"]: (g["balance"], g["expired"]) for g in balance["grants"]} == {
        "promo": ("0.00", False), "prepaid": ("71.00", False), "old": ("5.00", True)}  # fmt: skip
    voided = ok(post(api, f"/api/v1/invoices/{inv['number']}/void", {"reason": "wrong customer"}))
    assert voided["voided"]["status"] == "voided" and voided["replacement"] is None
    assert ok(get(api, "/api/v1/customers/acme/credits"))["balances"] == {"USD": "120.00"}  # given back


def test_void_with_reissue_makes_a_replacement_and_leaves_the_original(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    subscribe(api)
    calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 1500)
    move_to(api, "2026-04-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000001"]
    original = get(api, "/api/v1/invoices/INV-000001").content
    calls(api, "c2", "acme", "2026-03-20T10:00:00Z", 500)  # a correction arrives
    assert_problem(post(api, "/api/v1/invoices/INV-000001/reissue"), 409, "invoice_not_voided")
    assert_problem(post(api, "/api/v1/invoices/INV-000001/void", {"reason": " "}), 400, "invalid_void")
    out = ok(post(api, "/api/v1/invoices/INV-000001/void", {"reason": "usage corrected", "reissue": True}))
    assert out["replacement"] == "INV-000002"
    assert (out["voided"]["status"], out["voided"]["replacedBy"], out["voided"]["voidReason"]) == (
        "voided", "INV-000002", "usage corrected")  # fmt: skip
    replacement = invoice(api, "INV-000002")
    assert replacement["replaces"] == "INV-000001" and lines(replacement)[1][2:4] == ("10.00", "2000")
    voided = get(api, "/api/v1/invoices/INV-000001")
    assert voided.content == original and voided.headers["meterline-invoice-status"] == "voided"
    assert_problem(post(api, "/api/v1/invoices/INV-000001/void", {"reason": "again"}), 409, "invoice_voided")
    again = post(api, "/api/v1/invoices/INV-000001/reissue")
    assert again.status_code == 201 and again.json()["replacement"] == "INV-000002"  # idempotent
    assert run(api)["created"] == []  # the period stays invoiced (by the replacement)
    move_to(api, "2026-05-01T00:01:00Z")
    april = invoice(api, run(api)["created"][0])
    assert all(ln["kind"] != "adjustment" for ln in april["lines"])  # the replacement already has the correction


def test_finalized_invoices_are_byte_identical_after_a_restart(tmp_path: Path) -> None:
    overrides: dict[str, dict[str, object]] = {"billing": {"scheduler_enabled": False}}
    gen = build_api(tmp_path, **overrides)
    api = next(gen)
    setup_billing(api)
    add_customer(api, "bravo")
    subscribe(api)
    subscribe(api, customer="bravo", start="2026-03-10T00:00:00Z", anchorDay=31)
    calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 1234)
    gb(api, "s1", "bravo-eu", "2026-03-01T10:00:00Z", "0.125")
    move_to(api, "2026-04-01T00:01:00Z")
    created = run(api)["created"]
    assert created == ["INV-000001", "INV-000002"]
    before = {n: get(api, f"/api/v1/invoices/{n}").content for n in created}
    html = get(api, "/api/v1/invoices/INV-000001/html").text
    gen.close()
    gen2 = build_api(tmp_path, **overrides)
    api2 = next(gen2)
    try:
        assert {n: get(api2, f"/api/v1/invoices/{n}").content for n in created} == before
        move_to(api2, "2026-04-01T00:01:00Z")
        assert run(api2)["created"] == []  # and nothing is billed twice after the restart
        assert get(api2, "/api/v1/invoices/INV-000001/html").text == html
    finally:
        gen2.close()


def test_customer_zone_and_month_end_anchor_cut_the_periods(bapi: Api) -> None:
    api = bapi
    setup_billing(api, customer="acme")
    add_customer(api, "kathmandu", tz="Asia/Kathmandu")  # +05:45
    sub = subscribe(api, customer="kathmandu", start="2026-01-31T00:00:00Z", anchorDay=31)
    assert sub["zone"] == "Asia/Kathmandu"
    calls(api, "k1", "kathmandu", "2026-02-27T18:14:00Z", 1001)  # 2026-02-28T00:00+05:45 is 18:15Z
    calls(api, "k2", "kathmandu", "2026-02-27T18:15:00Z", 1003)
    move_to(api, "2026-03-31T00:00:00Z")
    created = run(api)["created"]
    assert len(created) == 2  # Jan 31 -> Feb 28 (clipped start) and Feb 28 -> Mar 31 (local)
    first, second = invoice(api, created[0]), invoice(api, created[1])
    assert (first["periodStart"], first["periodEnd"]) == ("2026-01-31T00:00:00+05:45", "2026-02-28T00:00:00+05:45")
    assert first["lines"][0]["proration"]["coveredUs"] < first["lines"][0]["proration"]["periodUs"]
    assert (lines(first)[1][2:4], lines(second)[1][2:4]) == (("0.01", "1001"), ("0.03", "1003"))
    assert second["periodEnd"] == "2026-03-31T00:00:00+05:45"
    empty = api.client.post(f"/api/v1/billing/subscriptions/{sub['id']}/cancel", headers=api.headers())
    assert empty.status_code == 200 and empty.json()["end"] == "2026-03-31T00:00:00Z"


def test_an_invoice_counts_the_customers_key_as_its_entitlements_do(bapi: Api) -> None:
    """OpenMeter attributes a customer's usage to its key and its subject keys alike: a customer
    whose subject keys leave out its key is billed for the events sent under the key too, the same
    usage its entitlements and customer-filtered queries count."""
    api = bapi
    spec = {"slug": "api_calls", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.calls"}
    ok(api.create_meter(**spec), 201)
    ok(api.create_meter(slug="storage_gb", eventType="storage", aggregation="SUM", valueProperty="$.gb"), 201)
    ok(post(api, "/api/v1/customers", {"key": "acme", "subjectKeys": ["acme-app"]}), 201)
    ok(post(api, "/api/v1/billing/plans", PLAN), 201)
    ok(post(api, "/api/v1/billing/plans/pro/versions/1/publish"))
    subscribe(api)
    calls(api, "k1", "acme", "2026-03-01T01:00:00Z", 1500)  # the key itself
    calls(api, "a1", "acme-app", "2026-03-01T02:00:00Z", 500)
    calls(api, "x1", "someone-else", "2026-03-01T02:00:00Z", 7000)
    preview = ok(get(api, "/api/v1/customers/acme/invoice-preview"))["invoices"][0]
    api_line = next(ln for ln in preview["lines"] if ln["name"] == "API calls")
    assert (api_line["quantity"], api_line["amount"]) == ("2000", "10.00")  # 1000 free, then 0.01
    rows = ok(get(api, "/api/v1/meters/api_calls/query", filterCustomerId="acme"))["data"]
    assert sum(Decimal(str(r["value"])) for r in rows) == 2000
