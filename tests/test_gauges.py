"""TIME_WEIGHTED_SUM meters through a real server: a month's GB-hours across the October DST
change in Europe/Berlin, computed by hand; late readings, voids and amends; partial minutes;
a meter created after its readings; ``rebuild --check`` after all of it; scale mode answers
what embedded mode answers for the same readings."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, build_api, build_scale_api, start_server
from test_billing_api import invoice, move_to, ok, post, run

BATCH = {"Content-Type": "application/cloudevents-batch+json"}
GB_H = Decimal(3600)
"""GB-seconds in a GB-hour."""
OCTOBER = {"from": "2025-09-30T22:00:00Z", "to": "2025-10-31T23:00:00Z"}
"""October 2025 in Europe/Berlin: CEST (+02:00) until 26 Oct 03:00, then CET (+01:00): 745 hours."""


def reading(
    id_: str, time: str, gb: str, subject: str = "acme", bucket: str = "b1", type_: str = "storage"
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id_,
        "source": "storage",
        "type": type_,
        "subject": subject,
        "time": time,
        "data": {"gb": gb, "bucket": bucket},
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("gauges") / "data")
    yield s
    s.stop()


def client(s: Server) -> httpx.Client:
    return httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}, timeout=30)


def backfill(c: httpx.Client, events: list[dict[str, Any]]) -> None:
    r = c.post("/api/v1/backfills", json=events, headers=BATCH)
    assert r.status_code == 200, r.text
    assert {e["status"] for e in r.json()["events"]} == {"accepted"}, r.text


def meter(c: httpx.Client, slug: str, type_: str = "storage", **extra: Any) -> None:
    spec = {"slug": slug, "eventType": type_, "aggregation": "TIME_WEIGHTED_SUM", "valueProperty": "$.gb", **extra}
    r = c.post("/api/v1/meters", json=spec)
    assert r.status_code == 201, r.text


def values(c: httpx.Client, slug: str, **params: str) -> list[tuple[str, str, Decimal]]:
    r = c.get(f"/api/v1/meters/{slug}/query", params=params)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    return [
        (row["windowStart"].replace(".000Z", "Z"), row["windowEnd"].replace(".000Z", "Z"), Decimal(str(row["value"])))
        for row in data
    ]


def total(c: httpx.Client, slug: str, **params: str) -> Decimal:
    rows = values(c, slug, **params)
    assert len(rows) == 1, rows
    return rows[0][2]


def test_a_month_across_the_dst_change_equals_the_hand_computation(served: Server) -> None:
    with client(served) as c:
        dst_month(c)


def test_a_scale_node_computes_the_dst_month_by_hand_and_after_a_void_and_an_amend(
    scale_site: Any, scale_node: Server
) -> None:
    """The same month through a real scale-mode API node (``meterline serve``) and sink worker;
    then a void and an amend move it by exactly what a hand computation says."""
    key = scale_site.key(f"n{uuid.uuid4().hex[:10]}")
    with httpx.Client(base_url=scale_node.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        dst_month(c)
        month = dict(OCTOBER, windowSize="MONTH", windowTimeZone="Europe/Berlin")
        r = c.post("/api/v1/events/r2/void", json={"source": "storage", "reason": "probe"})
        assert r.status_code == 201, r.text
        # 10 GB now holds until r3 at 01:30Z: 603.5 h, then 5 GB for 141.5 h
        hand = 10 * Decimal("603.5") + 5 * Decimal("141.5")
        assert values(c, "storage_gb", **month) == [("2025-09-30T22:00:00Z", "2025-10-31T23:00:00Z", hand * GB_H)]
        amended = {"source": "storage", "reason": "probe", "event": reading("r3", "2025-10-26T01:30:00Z", "8")}
        r = c.post("/api/v1/events/r3/amend", json=amended)
        assert r.status_code == 201, r.text
        hand = 10 * Decimal("603.5") + 8 * Decimal("141.5")
        assert values(c, "storage_gb", **month) == [("2025-09-30T22:00:00Z", "2025-10-31T23:00:00Z", hand * GB_H)]
        november_first = total(c, "storage_gb", **{"from": "2025-10-31T23:00:00Z", "to": "2025-11-01T23:00:00Z"})
        assert november_first == (8 * Decimal("0.5") + 100 * Decimal("23.5")) * GB_H


def dst_month(c: httpx.Client) -> None:
    """October 2025 in Europe/Berlin from four readings, by hand (month, the 25-hour day, the
    level carried into November)."""
    meter(c, "storage_gb")
    backfill(
        c,
        [
            reading("r1", "2025-09-15T00:00:00Z", "10"),  # set in September: holds into October
            reading("r2", "2025-10-26T00:30:00Z", "20"),  # 02:30 CEST, before the clocks go back
            reading("r3", "2025-10-26T01:30:00Z", "5"),  # 02:30 CET, after
            reading("r4", "2025-10-31T23:30:00Z", "100"),  # 1 Nov 00:30 CET: November
        ],
    )
    month = dict(OCTOBER, windowSize="MONTH", windowTimeZone="Europe/Berlin")
    # by hand, in GB-hours: 10 GB from 1 Oct 00:00 CEST (30 Sep 22:00Z) to 26 Oct 00:30Z is
    # 25 days + 2.5 h = 602.5 h; 20 GB for 1 h; 5 GB from 01:30Z to 31 Oct 23:00Z is 141.5 h
    hand = 10 * Decimal("602.5") + 20 * 1 + 5 * Decimal("141.5")
    assert hand == Decimal("6752.5") and Decimal("602.5") + 1 + Decimal("141.5") == 745
    assert values(c, "storage_gb", **month) == [("2025-09-30T22:00:00Z", "2025-10-31T23:00:00Z", hand * GB_H)]
    # 26 Oct in Berlin has 25 hours: 10 GB for 2.5 h, 20 GB for 1 h, 5 GB for 21.5 h
    days = values(
        c,
        "storage_gb",
        **{"from": "2025-10-25T22:00:00Z", "to": "2025-10-27T23:00:00Z"},
        windowSize="DAY",
        windowTimeZone="Europe/Berlin",
    )
    assert days == [
        ("2025-10-25T22:00:00Z", "2025-10-26T23:00:00Z", (25 + 20 + Decimal("107.5")) * GB_H),
        ("2025-10-26T23:00:00Z", "2025-10-27T23:00:00Z", 5 * 24 * GB_H),
    ]
    # the level carries into November: 5 GB for half an hour, then 100 GB
    november_first = total(c, "storage_gb", **{"from": "2025-10-31T23:00:00Z", "to": "2025-11-01T23:00:00Z"})
    assert november_first == (5 * Decimal("0.5") + 100 * Decimal("23.5")) * GB_H


def test_late_readings_voids_and_amends_change_only_what_they_hold(served: Server) -> None:
    with client(served) as c:
        meter(c, "late_gb")
        backfill(
            c,
            [
                reading("l1", "2025-03-01T00:00:00Z", "4", subject="late"),
                reading("l2", "2025-03-01T00:10:00Z", "6", subject="late"),
            ],
        )
        hour = {"from": "2025-03-01T00:00:00Z", "to": "2025-03-01T01:00:00Z"}
        assert total(c, "late_gb", **hour, subject="late") == 4 * 600 + 6 * 3000
        # a late reading inside the stored minutes: only up to the next reading (00:10) changes
        backfill(c, [reading("l3", "2025-03-01T00:05:30Z", "100", subject="late")])
        assert total(c, "late_gb", **hour, subject="late") == 4 * 330 + 100 * 270 + 6 * 3000
        # a later hour is untouched by it: 6 GB all along
        next_hour = {"from": "2025-03-01T01:00:00Z", "to": "2025-03-01T02:00:00Z"}
        assert total(c, "late_gb", **next_hour, subject="late") == 6 * 3600
        # void the late reading: as if it never came
        r = c.post("/api/v1/events/l3/void", json={"source": "storage", "reason": "wrong probe"})
        assert r.status_code == 201, r.text
        assert total(c, "late_gb", **hour, subject="late") == 4 * 600 + 6 * 3000
        # amend the second one into the next hour: the first level holds until then
        amended = reading("l2", "2025-03-01T01:30:00Z", "2", subject="late")
        r = c.post("/api/v1/events/l2/amend", json={"source": "storage", "reason": "clock skew", "event": amended})
        assert r.status_code == 201, r.text
        assert total(c, "late_gb", **hour, subject="late") == 4 * 3600
        assert total(c, "late_gb", **next_hour, subject="late") == 4 * 1800 + 2 * 1800
        # a partial minute at both ends: 00:00:30 to 01:30:15 -> 4 GB for 5370 s, 2 GB for 15 s
        exact = {"from": "2025-03-01T00:00:30Z", "to": "2025-03-01T01:30:15Z"}
        assert total(c, "late_gb", **exact, subject="late") == 4 * 5370 + 2 * 15
        # within one minute, after a reading before `from`
        inside = {"from": "2025-03-01T01:30:05Z", "to": "2025-03-01T01:30:07.5Z"}
        assert total(c, "late_gb", **inside, subject="late") == 2 * Decimal("2.5")


def test_groups_and_subjects_add_up_and_a_new_meter_counts_past_readings(served: Server) -> None:
    with client(served) as c:
        backfill(
            c,
            [
                reading("g1", "2025-05-01T00:00:00Z", "1", subject="grp", bucket="x", type_="disk"),
                reading("g2", "2025-05-01T00:30:00Z", "3", subject="grp", bucket="y", type_="disk"),
                reading("g3", "2025-05-01T00:45:00Z", "2", subject="other", bucket="x", type_="disk"),
            ],
        )
        meter(c, "grouped_gb", type_="disk", groupBy={"bucket": "$.bucket"})  # created after them: backfilled
        hour = {"from": "2025-05-01T00:00:00Z", "to": "2025-05-01T01:00:00Z"}
        deadline = time.monotonic() + 30
        while not (
            rows := c.get("/api/v1/meters/grouped_gb/query", params={**hour, "groupBy": "bucket"}).json()["data"]
        ):
            assert time.monotonic() < deadline, "the new meter's backfill did not finish"
            time.sleep(0.05)
        assert {r["groupBy"]["bucket"]: Decimal(str(r["value"])) for r in rows} == {
            "x": Decimal(3600 + 2 * 900),
            "y": Decimal(3 * 1800),
        }
        assert total(c, "grouped_gb", **hour) == 3600 + 2 * 900 + 3 * 1800


def test_rebuild_check_finds_nothing_to_change(served: Server) -> None:
    """Readings of its own (whatever else the shared server holds): in order, late, interleaved
    within an hour and for a meter created after them; the rollups then equal a rebuild."""
    with client(served) as c:
        meter(c, "rebuilt_gb", type_="rebuilt")
        backfill(
            c,
            [
                reading("rb1", "2025-07-01T00:00:00Z", "4", subject="rb", type_="rebuilt"),
                reading("rb2", "2025-07-01T00:50:00Z", "2", subject="rb", type_="rebuilt"),
            ],
        )
        backfill(c, [reading("rb3", "2025-07-01T00:20:00Z", "8", subject="rb", type_="rebuilt")])  # late
        meter(c, "rebuilt_later_gb", type_="rebuilt")  # created after them: backfilled
        july = {"from": "2025-07-01T00:00:00Z", "to": "2025-07-01T01:00:00Z", "consistency": "strong"}
        expected = 4 * 1200 + 8 * 1800 + 2 * 600
        assert total(c, "rebuilt_gb", **july) == expected
        deadline = time.monotonic() + 30
        while (later := values(c, "rebuilt_later_gb", **july)) != [(july["from"], july["to"], Decimal(expected))]:
            assert time.monotonic() < deadline, f"the new meter's backfill did not finish: {later}"
            time.sleep(0.05)
    out = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "rebuild", "--check", "--data-dir", str(served.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


GB_HOURS_PLAN: dict[str, Any] = {
    "plan": "disk",
    "name": "Disk",
    "currency": "USD",
    "cards": [
        {
            "key": "storage",
            "name": "Storage",
            "meter": "disk_gb",
            "unitSize": "3600",  # GB-seconds -> GB-hours
            "freeUnits": "100",
            "model": {"model": "per_unit", "unitPrice": "0.01"},
        }
    ],
}


def test_a_plan_prices_gb_hours_of_a_berlin_month_with_the_spring_dst_change(tmp_path: Path) -> None:
    for api in build_api(tmp_path, billing={"scheduler_enabled": False}):
        ok(
            api.create_meter(slug="disk_gb", eventType="disk", aggregation="TIME_WEIGHTED_SUM", valueProperty="$.gb"),
            201,
        )
        ok(post(api, "/api/v1/customers", {"key": "acme", "name": "Acme", "subjectKeys": ["acme"]}), 201)
        ok(post(api, "/api/v1/billing/plans", GB_HOURS_PLAN), 201)
        ok(post(api, "/api/v1/billing/plans/disk/versions/1/publish"))
        sub = {"customer": "acme", "plan": "disk", "start": "2026-02-28T23:00:00Z", "zone": "Europe/Berlin"}
        ok(post(api, "/api/v1/billing/subscriptions", sub), 201)
        move_to(api, "2026-04-01T00:01:00Z")
        readings = [
            reading("d1", "2026-02-20T00:00:00Z", "8", type_="disk"),  # set in February: holds into March
            reading("d2", "2026-03-29T00:30:00Z", "20", type_="disk"),  # 01:30 CET, before the clocks go forward
            reading("d3", "2026-03-29T01:30:00Z", "4", type_="disk"),  # 03:30 CEST, after
        ]
        assert api.post_events(readings).status_code == 204
        assert run(api)["created"] == ["INV-000001"]
        # March in Berlin is 743 hours (2026-02-28T23:00Z to 2026-03-31T22:00Z): 8 GB for 673.5 h,
        # 20 GB for 1 h, 4 GB for 68.5 h = 5682 GB-h; 100 free, 5582 at 0.01
        assert Decimal("673.5") + 1 + Decimal("68.5") == 743
        line = invoice(api, "INV-000001")["lines"][0]
        assert (Decimal(line["quantity"]), line["amount"]) == (
            Decimal(8 * Decimal("673.5") + 20 + 4 * Decimal("68.5")),
            "55.82",
        )
        # April: no reading at all, the 4 GB hold all 720 hours: 2880 GB-h, 100 free
        move_to(api, "2026-05-01T00:01:00Z")
        assert run(api)["created"] == ["INV-000002"]
        line = invoice(api, "INV-000002")["lines"][0]
        assert (Decimal(line["quantity"]), line["amount"]) == (Decimal(2880), "27.80")


def test_metered_entitlements_refuse_a_gauge_meter(tmp_path: Path) -> None:
    for api in build_api(tmp_path):
        ok(
            api.create_meter(slug="disk_gb", eventType="disk", aggregation="TIME_WEIGHTED_SUM", valueProperty="$.gb"),
            201,
        )
        ok(post(api, "/api/v1/customers", {"key": "acme", "name": "Acme", "subjectKeys": ["acme"]}), 201)
        ok(post(api, "/api/v1/features", {"key": "disk", "name": "Disk", "meterSlug": "disk_gb"}), 201)
        body = {"type": "metered", "featureKey": "disk", "usagePeriod": {"interval": "MONTH"}}
        r = post(api, "/api/v1/customers/acme/entitlements", body)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "invalid_entitlement" and "TIME_WEIGHTED_SUM" in r.json()["detail"]


def test_a_rate_card_unit_size_must_be_positive_and_only_on_usage(tmp_path: Path) -> None:
    for api in build_api(tmp_path):
        card = dict(GB_HOURS_PLAN["cards"][0], unitSize="0")
        flat = {"key": "fee", "name": "Fee", "unitSize": "60", "model": {"model": "flat", "amount": "5"}}
        r = post(api, "/api/v1/billing/plans", dict(GB_HOURS_PLAN, cards=[card, flat]))
        assert r.status_code == 400 and r.json()["code"] == "invalid_plan", r.text
        assert any("unitSize must be greater than 0" in p for p in r.json()["problems"])
        assert any("flat fees take no" in p and "unitSize" in p for p in r.json()["problems"])


SCALE_QUERIES: list[dict[str, str]] = [
    {"from": "2026-02-20T00:00:00Z", "to": "2026-02-23T00:00:00Z", "windowSize": "HOUR", "groupBy": "subject"},
    {"from": "2026-02-20T00:00:00Z", "to": "2026-02-23T00:00:00Z", "windowSize": "DAY",
     "windowTimeZone": "Asia/Kathmandu", "groupBy": "bucket"},
    {"from": "2026-02-21T00:00:00Z", "to": "2026-02-22T00:00:00Z", "subject": "acme"},
    {"from": "2026-02-20T10:00:30.25Z", "to": "2026-02-21T23:59:59.5Z", "windowSize": "HOUR",
     "windowTimeZone": "Asia/Kolkata"},
    {"from": "2026-02-20T10:05:10Z", "to": "2026-02-20T10:05:40Z", "groupBy": "subject"},
    {"from": "2026-02-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "windowSize": "MONTH", "groupBy": "subject"},
    {"from": "2026-02-22T00:00:00Z", "to": "2026-02-22T00:15:00Z", "windowSize": "MINUTE"},
]  # fmt: skip


def readings_over_days() -> list[dict[str, Any]]:
    """Readings of two subjects and two buckets over three days, every 7 to 97 minutes."""
    out, minute = [], 0
    for i in range(120):
        minute += 7 + (i * 37) % 91
        at = 1_771_545_600 + minute * 60 + (i * 13) % 60  # from 2026-02-20T00:00:00Z
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        out.append(reading(f"s{i}", stamp, f"{(i * 7) % 23}.{i % 10}", ("acme", "globex")[i % 2], f"b{i % 3 % 2}"))
    return out


def test_scale_mode_answers_what_embedded_answers(scale_site: Any, tmp_path: Path) -> None:
    """The same readings through an embedded server and an API node of scale mode (sink workers
    folding the log into ClickHouse's ``usage_gauges``): every TIME_WEIGHTED_SUM answer is the
    same to the digit — windows in :45 and :30 zones, groups, subjects, partial minutes, a month
    carried in — also after late readings inside buckets already written, for a meter created
    after its readings (its backfill), and after a void and an amend."""
    events = readings_over_days()
    late = [
        reading("late1", "2026-02-20T10:05:30Z", "100", "acme", "b0"),
        reading("late2", "2026-02-21T03:33:03Z", "0.5", "globex", "b1"),
        reading("late3", "2026-02-19T23:59:59.999Z", "3", "acme", "b0"),
    ]
    embedded, scale = build_api(tmp_path / "embedded"), build_scale_api(scale_site, tmp_path / "scale")
    for e_api in embedded:
        for s_api in scale:
            both = (e_api, s_api)
            spec = {"eventType": "storage", "aggregation": "TIME_WEIGHTED_SUM", "valueProperty": "$.gb",
                    "groupBy": {"bucket": "$.bucket"}}  # fmt: skip
            for a in both:
                ok(a.create_meter(slug="gb", **spec), 201)
                _sent(a.post_events(events))
            for q in SCALE_QUERIES:
                assert _rows(s_api, "gb", q) == _rows(e_api, "gb", q), q
            for a in both:
                _sent(a.post_events(late))
                ok(a.create_meter(slug="later", **spec), 201)
            for q in SCALE_QUERIES:
                for slug in ("gb", "later"):
                    assert _rows(s_api, slug, q) == _rows(e_api, slug, q), (slug, q)
            # the level acme carries into 21 Feb (a query of SCALE_QUERIES) is voided too
            carry = max(
                (e for e in events if e["subject"] == "acme" and e["time"] < "2026-02-21"), key=lambda e: e["time"]
            )
            for a in both:  # a void and an amend: their hours are answered from the readings that count
                r = a.client.post(f"/api/v1/events/{carry['id']}/void", json={"source": "storage", "reason": "probe"},
                                  headers=a.headers())  # fmt: skip
                assert r.status_code == 201, r.text
                r = a.client.post("/api/v1/events/late1/void", json={"source": "storage", "reason": "probe"},
                                  headers=a.headers())  # fmt: skip
                assert r.status_code == 201, r.text
                amended = reading("s5", "2026-02-21T07:00:00Z", "42", "globex", "b1")
                body = {"source": "storage", "reason": "skew", "event": amended}
                r = a.client.post("/api/v1/events/s5/amend", json=body, headers=a.headers())
                assert r.status_code == 201, r.text
            for q in SCALE_QUERIES:
                for slug in ("gb", "later"):
                    assert _rows(s_api, slug, q) == _rows(e_api, slug, q), ("corrected", slug, q)


def _sent(r: httpx.Response) -> None:
    assert r.status_code in (200, 204), r.text


def _rows(api: Any, slug: str, params: dict[str, str]) -> list[tuple[Any, ...]]:
    got = api.query(slug, params)
    assert got.status_code == 200, got.text
    return [(r["windowStart"], r["windowEnd"], r.get("subject"), r["groupBy"], r["value"]) for r in got.json()["data"]]
