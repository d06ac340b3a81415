"""Reconciliation's billed stage in quantities and money: every finalized window's billed
quantity per meter against what is metered now, the difference explained by events that
arrived, were amended or were voided after the window was invoiced (adjustments pending), and a
difference planted in the rollups by hand reported as unexplained: in the API, the metric, the
tolerance and the CLI's exit status; in both modes (the CLI against an embedded server here,
against a scale-mode node in test_reconcile)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import MODES, Api, build_api, mode_api, start_server
from test_billing_api import calls, ev, get, move_to, ok, post, run, setup_billing, subscribe
from test_reconcile import plant_clickhouse


@pytest.fixture(params=MODES)
def bapi(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    yield from mode_api(request, tmp_path, billing={"scheduler_enabled": False}, reconcile={"interval": None})


def reconcile(api: Api, **params: str) -> Any:
    return ok(get(api, "/api/v1/reconciliation", **{"from": "2026-03-01", "to": "2026-03-31", **params}))


def billed(report: dict[str, Any], meter: str = "api_calls") -> dict[str, Any]:
    (line,) = [b for b in report["billed"] if b["meter"] == meter]
    return line


def causes(line: dict[str, Any]) -> dict[str, Decimal]:
    return {c["cause"]: Decimal(str(c["quantity"])) for c in line["causes"]}


def plant(api: Api, meter: str, subject: str, at: str, extra: int) -> None:
    """Add ``extra`` to the meter's total where it holds ``at`` for ``subject``, edited by hand:
    the derived tables now disagree with the ledger in quantity while their event counts still
    match it."""
    if api.config.storage.engine == "scale":
        t = int(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp())
        plant_clickhouse(api.config, reconcile(api)["namespace"], meter, at=t, count=0, total=extra)
    else:
        plant_sqlite(api.data_dir, meter, subject, at, extra)


def plant_sqlite(data_dir: Path, meter: str, subject: str, at: str, extra: int) -> None:
    """Add ``extra`` to the meter's total in every rollup and summary row holding ``at`` for
    ``subject`` (and meter-wide)."""
    t = int(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp())
    conn = sqlite3.connect(data_dir / "meterline.db")
    with conn:
        (key,) = conn.execute("SELECT key FROM meters WHERE slug = ? AND deleted_us IS NULL", (meter,)).fetchone()
        changed = 0
        for table, subjects in (("rollups", (subject,)), ("summaries", (subject, ""))):
            for s in subjects:
                changed += conn.execute(
                    f"UPDATE {table} SET total = total + ? WHERE meter = ? AND subject = ? AND bucket <= ?"
                    " AND ? < bucket + level",
                    (extra, key, s, t, t),
                ).rowcount
    conn.close()
    assert changed >= 3


def test_billed_quantities_are_explained_and_a_planted_difference_is_not(bapi: Api) -> None:
    api = bapi
    setup_billing(api)
    subscribe(api)
    calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 1500)
    calls(api, "c2", "acme-eu", "2026-03-01T11:00:00Z", 500)
    calls(api, "c3", "acme", "2026-03-01T11:30:00Z", 700)
    report = reconcile(api)
    assert report["billed"] == [] and report["unexplainedBilled"] == 0  # nothing finalized yet

    move_to(api, "2026-04-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000001"]
    report = reconcile(api)
    line = billed(report)
    assert (line["customer"], line["invoice"], line["windowStart"]) == (
        "acme",
        "INV-000001",
        "2026-03-01T00:00:00.000Z",
    )
    assert (line["billed"], line["metered"], line["difference"], line["causes"]) == (2700, 2700, 0, [])
    assert report["withinTolerance"] is True

    move_to(api, "2026-04-01T00:05:00Z")  # after March was finalized:
    calls(api, "late", "acme", "2026-03-31T23:00:00Z", 100)  # a late event,
    void = {"source": "t", "reason": "test traffic"}
    assert post(api, "/api/v1/events/c1/void", void).status_code == 201  # a void,
    amend = {"source": "t", "reason": "miscounted", "event": ev("c2", "acme-eu", "2026-03-01T11:00:00Z", calls=900)}
    assert post(api, "/api/v1/events/c2/amend", amend).status_code == 201  # and an amend (+400)
    report = reconcile(api)
    line = billed(report)
    assert (line["billed"], line["metered"], line["difference"]) == (2700, 1700, -1000)
    assert causes(line) == {"late_adjustment_pending": 500, "voided_adjustment_pending": -1500}
    assert line["currency"] == "USD" and Decimal(str(line["amount"])) < 0  # the money the adjustment moves
    assert report["unexplainedBilled"] == 0 and report["withinTolerance"] is True

    move_to(api, "2026-05-01T00:01:00Z")
    assert len(run(api)["created"]) == 1  # April's invoice carries the adjustment: billed now matches
    line = billed(reconcile(api))
    assert (line["billed"], line["metered"], line["causes"]) == (1700, 1700, [])

    plant(api, "api_calls", "acme", "2026-03-01T11:30:00Z", 7)
    report = reconcile(api)
    line = billed(report)
    assert (line["billed"], line["metered"]) == (1700, 1707)
    assert causes(line) == {"unexplained": 7}
    assert report["unexplainedBilled"] == 1 and report["withinTolerance"] is False
    assert report["unexplained"] == 0  # the events still add up: only the quantities do not
    assert reconcile(api, quantityTolerance="7")["withinTolerance"] is True
    assert reconcile(api, quantityTolerance="6.99")["withinTolerance"] is False
    bad = api.client.get("/api/v1/reconciliation", params={"quantityTolerance": "-1"}, headers=api.headers())
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_parameter"
    reconcile(api)
    assert "meterline_reconciliation_unexplained_billed 1.0" in api.client.get("/metrics").text


def test_an_amend_moving_usage_out_of_a_billed_window_is_explained(bapi: Api) -> None:
    """An amend after the window was finalized that moves the event to a subject of no one, or
    into another window, takes its quantity out of the billed window: a pending adjustment, not
    an unexplained difference (it was reported unexplained: the quantity it has elsewhere was
    counted as still in the window)."""
    api = bapi
    setup_billing(api)
    subscribe(api)
    calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 1500)
    calls(api, "c2", "acme-eu", "2026-03-01T11:00:00Z", 500)
    calls(api, "c3", "acme", "2026-03-01T11:30:00Z", 700)
    move_to(api, "2026-04-01T00:01:00Z")
    assert run(api)["created"] == ["INV-000001"]
    move_to(api, "2026-04-01T00:05:00Z")
    away = {"source": "t", "reason": "not acme's", "event": ev("c1", "stranger", "2026-03-01T10:00:00Z", calls=1500)}
    assert post(api, "/api/v1/events/c1/amend", away).status_code == 201
    later = {"source": "t", "reason": "wrong day", "event": ev("c3", "acme", "2026-04-01T00:02:00Z", calls=700)}
    assert post(api, "/api/v1/events/c3/amend", later).status_code == 201
    report = reconcile(api)
    line = billed(report)
    assert (line["billed"], line["metered"], line["difference"]) == (2700, 500, -2200)
    assert causes(line) == {"late_adjustment_pending": -2200}
    assert report["unexplainedBilled"] == 0 and report["withinTolerance"] is True


def test_cli_reconcile_exits_non_zero_on_an_unexplained_billed_quantity(tmp_path: Path) -> None:
    """March invoiced with a frozen clock, then a real server on the same data directory (its
    scheduler off, so no later run adjusts March): the CLI passes, and fails once the rollups
    under the invoice are edited by hand."""
    for api in build_api(tmp_path, billing={"scheduler_enabled": False}, reconcile={"interval": None}):
        setup_billing(api)
        subscribe(api)
        calls(api, "c1", "acme", "2026-03-01T10:00:00Z", 1500)
        move_to(api, "2026-04-01T00:01:00Z")
        assert run(api)["created"] == ["INV-000001"]
    data = tmp_path / "data"
    env = {"METERLINE_BILLING__SCHEDULER_ENABLED": "false"}
    cmd = [sys.executable, "-m", "meterline.cli.main", "reconcile", "--from", "2026-03-01", "--to", "2026-03-31"]
    for planted, code in ((False, 0), (True, 1)):
        if planted:
            plant_sqlite(data, "api_calls", "acme", "2026-03-01T10:00:00Z", 3)
        server = start_server(data, env=env)
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "METERLINE_URL": server.url,
                                                         "METERLINE_API_KEY": server.key}
            )  # fmt: skip
        finally:
            server.stop()
        assert out.returncode == code, out.stdout + out.stderr
        if planted:
            assert "unexplained" in out.stdout and "BEYOND TOLERANCE" in out.stdout, out.stdout
            assert "INV-000001" in out.stdout and "quantities beyond 0: 1" in out.stdout, out.stdout
        else:
            assert "billed quantities: no differences" in out.stderr, out.stdout + out.stderr
