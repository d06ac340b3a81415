"""Reconciliation in scale mode while the sink worker applies the log asynchronously: a worker
stopped after inserting a batch's raw events and rollups, before recording the batch as applied,
leaves rollups ahead of the position the report reflects — explained as ``in_flight``, never
unexplained — and events acknowledged while it is stopped count at no stage; once it goes on,
every stage matches. A row planted by hand in a corrected hour (one the queries answer from the
raw events) is still found, by the scheduled job (its metric) and by the API. The seeded cases
(rejects, quarantine, voids, amends, late events after finalization) run in both modes in
test_reconcile and test_reconcile_billed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Api, build_scale_api
from scale_site import Site, site
from stack.launch import Stack
from test_billing_api import ev, get, ok, post
from test_reconcile import differences, plant_clickhouse
from test_scale_zombie import PAUSED_WORKER, stopped, wait_until

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.schema import EVENTS

pytestmark = pytest.mark.heavy  # a site of its own with a worker stopped mid-batch

EXTRA = """
[aggregation]
max_wait = 1.0
"""


@pytest.fixture
def paused_site(scale_stack: Stack, tmp_path: Path) -> Iterator[Site]:
    """A site whose reads wait at most a second for the workers (its only worker will be
    stopped)."""
    with site(scale_stack, tmp_path / "site", partitions=1, extra=EXTRA) as s:
        yield s


def reconcile(api: Api, **params: str) -> Any:
    day = {"from": "2026-03-01", "to": "2026-03-01", "grain": "day"}
    return ok(get(api, "/api/v1/reconciliation", **{**day, **params}))


UNEXPLAINED = "meterline_reconciliation_unexplained_events 1.0"


def metric_shows(api: Api, text: str) -> Callable[[], bool]:
    return lambda: text in api.client.get("/metrics").text


def lines_become(api: Api, want: tuple[int, int, int, int]) -> Callable[[], bool]:
    return lambda: line(reconcile(api)) == want


def line(report: dict[str, Any]) -> tuple[int, int, int, int]:
    (found,) = [ln for ln in report["lines"] if ln["meter"] == "n"]
    return found["received"], found["accepted"], found["metered"], found["expected"]


def jobs(ids: range) -> list[dict[str, Any]]:
    return [ev(f"j{i}", f"c{i % 2}", f"2026-03-01T10:{i:02d}:00Z", "job") for i in ids]


def test_a_batch_in_flight_is_explained_and_events_not_applied_are_not_counted(
    paused_site: Site, tmp_path: Path
) -> None:
    s = paused_site
    marks = tmp_path / "marks"
    marks.mkdir()
    with (s.dir / "workers.log").open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, str(PAUSED_WORKER), str(s.config_path), "before-done", str(marks)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "METERLINE_LOG__FORMAT": "text"},
        )
    s.processes.append(worker)
    try:
        for api in build_scale_api(s, tmp_path, reconcile={"interval": "PT0.5S"}):  # the scheduled job too
            assert api.create_meter(slug="n", eventType="job", aggregation="COUNT").status_code == 201
            assert api.post_events(jobs(range(5))).status_code == 204
            wait_until(lambda: (marks / "paused").exists() and stopped(worker.pid), "the worker to stop", s)
            assert api.post_events(jobs(range(5, 8))).status_code == 204  # acknowledged, not applied

            started = time.monotonic()
            report = reconcile(api)  # waits for this node's writes at most max_wait, then answers
            assert time.monotonic() - started < 30
            assert report["unexplained"] == 0 and report["withinTolerance"] is True, report["differences"]
            assert line(report) == (0, 0, 5, 0)  # the rollups hold the stopped batch; the position does not
            assert differences(report, "n") == [("accepted->metered", "in_flight", 5)]
            assert report["asOfPosition"] == 0

            worker.send_signal(signal.SIGCONT)
            wait_until(lines_become(api, (8, 8, 8, 8)), "the worker to apply both batches", s)
            report = reconcile(api)
            assert report["asOfPosition"] == 8 and report["unexplained"] == 0
            assert differences(report, "n") == [("metered->billed", "not_invoiced", 8)]

            assert post(api, "/api/v1/events/j1/void", {"source": "t", "reason": "x"}).status_code == 201
            wait_until(lines_become(api, (8, 8, 7, 7)), "the void to be applied", s)
            # 10:00-11:00 of c1 is now a corrected hour, answered from the raw events: a row
            # planted there is still compared with the ledger
            plant_clickhouse(s.config, reconcile(api)["namespace"], "n", at=1_772_359_260, subject="c1")
            wait_until(metric_shows(api, UNEXPLAINED), "the scheduled job to find it", s)
            report = reconcile(api)
            assert report["unexplained"] == 1 and report["withinTolerance"] is False
            assert ("accepted->metered", "unexplained", 1) in differences(report, "n")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)


def test_a_log_record_with_two_rows_counts_once(scale_site: Site, tmp_path: Path) -> None:
    """A record of the log with two differing rows in the raw table (an erasure writes a row's
    erased form beside it before deleting the original) is one event at every stage."""
    for api in build_scale_api(scale_site, tmp_path, reconcile={"interval": None}):
        assert api.create_meter(slug="n", eventType="job", aggregation="COUNT").status_code == 201
        assert api.post_events(jobs(range(3))).status_code == 204
        report = reconcile(api)
        assert line(report) == (3, 3, 3, 3)
        config = scale_site.config
        conn = Connection(config.clickhouse.url, config.clickhouse.database)
        try:
            columns = ", ".join(name for name, _ in EVENTS)
            (row,) = conn.rows(
                f"SELECT {columns} FROM events WHERE namespace = {{ns:String}} AND position(raw, '\"j1\"') > 0",
                {"ns": report["namespace"]},
            )
            erased = [*row]
            erased[6] = row[6].replace('"subject":"c1"', '"subject":"erased"')
            conn.insert("events", EVENTS, [erased], f"twice:{report['namespace']}")
        finally:
            conn.close()
        report = reconcile(api)
        assert line(report) == (3, 3, 3, 3) and report["unexplained"] == 0, report["differences"]
