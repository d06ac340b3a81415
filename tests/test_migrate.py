"""``meterline migrate``: an embedded ledger appended to another store exactly once, through the
real CLI, with real servers on both sides."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from conftest import Server, free_port, start_server
from scale_site import site
from stack.launch import Stack

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=200)  # beyond the target's default late-arrival window (90 days)
METERS = [
    {"slug": "tokens", "eventType": "llm", "aggregation": "SUM", "valueProperty": "$.n", "groupBy": {"m": "$.m"}},
    {"slug": "calls", "eventType": "llm", "aggregation": "COUNT", "groupBy": {"m": "$.m"}},
]


def at(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def events() -> list[dict[str, Any]]:
    def ev(id_: str, subject: str, time: datetime | None, data: dict[str, Any], type_: str = "llm") -> dict[str, Any]:
        made = {"specversion": "1.0", "id": id_, "source": "api", "type": type_, "subject": subject, "data": data}
        return made if time is None else {**made, "time": at(time)}

    made = [
        ev(f"e{i}", f"c{i % 3}", NOW - timedelta(minutes=7 * i), {"n": f"{i}.000000000000000001", "m": "ab"[i % 2]})
        for i in range(40)
    ]
    made.append(ev("old", "c1", OLD, {"n": "7.5", "m": "a"}))
    made.append(ev("untimed", "c2", None, {"n": "2", "m": "b"}))
    made.append(ev("other", "c9", NOW, {}, "misc"))
    return made


def post(server: Server, path: str, body: object, content_type: str = "application/json") -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": content_type}
    return httpx.post(f"{server.url}{path}", content=msgspec.json.encode(body), headers=headers, timeout=30)


def get(server: Server, path: str, params: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {server.key}", "Meterline-Consistency": "strong"}
    got = httpx.get(f"{server.url}{path}", params=params, headers=headers, timeout=30)
    assert got.status_code == 200, got.text
    return got.json()


def totals(server: Server, meter: str) -> list[tuple[str, str, str, str]]:
    params = {"from": at(OLD - timedelta(days=1)), "to": at(NOW + timedelta(days=1)), "windowSize": "HOUR"}
    rows = get(server, f"/api/v1/meters/{meter}/query", {**params, "groupBy": ["m", "subject"]})["data"]
    return sorted((r["subject"], r["groupBy"]["m"], str(Decimal(str(r["value"]))), r["windowStart"]) for r in rows)


def _event_times(data_dir: Path) -> list[tuple[str, int]]:
    with closing(sqlite3.connect(data_dir / "meterline.db")) as conn:
        return sorted(conn.execute("SELECT id, time_us FROM events"))


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "migrate", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A running source server whose ledger holds the 43 events above, one of them older
    than the default late-arrival window and one sent without a time."""
    data = tmp_path_factory.mktemp("source") / "data"
    server = start_server(data, env={"METERLINE_INGEST__LATE_ARRIVAL_WINDOW": "P400D"})
    for meter in METERS:
        assert post(server, "/api/v1/meters", meter).status_code == 201
    report = post(server, "/api/v1/events", events(), "application/cloudevents-batch+json")
    assert report.status_code in (200, 204), report.text
    yield server, data
    server.stop()


def test_a_migration_reproduces_the_totals_and_a_second_run_adds_nothing(source: Any, tmp_path: Path) -> None:
    server, data = source
    target = tmp_path / "target"
    first = migrate("--data-dir", str(data), "--to-data-dir", str(target))  # the source server keeps running
    assert first.returncode == 0, first.stderr
    assert "read 43 events" in first.stdout and "accepted 43," in first.stdout
    again = migrate("--data-dir", str(data), "--to-data-dir", str(target))
    assert again.returncode == 0, again.stderr
    assert "accepted 0, already there 43, conflicting 0" in again.stdout

    moved = start_server(target)
    try:
        for meter in METERS:  # created after the events: backfilled from the migrated ledger
            assert post(moved, "/api/v1/meters", meter).status_code == 201
        for meter in METERS:
            assert totals(moved, meter["slug"]) == totals(server, meter["slug"])
        assert len(totals(server, "tokens")) > 20
        stored = [_event_times(side.data_dir) for side in (server, moved)]
        assert stored[0] == stored[1] and len(stored[0]) == 43  # the untimed event keeps the source's time
    finally:
        moved.stop()


def test_one_namespace_only(source: Any, tmp_path: Path) -> None:
    _, data = source
    done = migrate("--data-dir", str(data), "--to-data-dir", str(tmp_path / "t"), "--namespace", "elsewhere")
    assert done.returncode == 0, done.stderr
    assert "read 0 events up to source position 43: accepted 0," in done.stdout


def test_a_target_meter_that_cannot_read_an_event_is_reported_and_fails(source: Any, tmp_path: Path) -> None:
    _, data = source
    config = tmp_path / "target.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "target"}"\n\n[[meters]]\nslug = "misc"\nevent_type = "misc"\n'
        'aggregation = "SUM"\nvalue_property = "$.n"\n'
    )
    done = migrate("--data-dir", str(data), "--to", str(config))
    assert done.returncode == 1
    assert "accepted 42," in done.stdout and "rejected 1" in done.stdout
    assert "(default, id=other): unreadable_value" in done.stderr


def test_refused_targets_and_inputs(source: Any, tmp_path: Path) -> None:
    _, data = source
    busy = start_server(tmp_path / "busy")
    try:
        running = migrate("--data-dir", str(data), "--to-data-dir", str(busy.data_dir))
        assert running.returncode == 2 and "a meterline server is running on the target" in running.stderr
    finally:
        busy.stop()
    assert "Traceback" not in running.stderr
    same = migrate("--data-dir", str(data), "--to-data-dir", str(data))
    assert same.returncode == 2 and "same data directory" in same.stderr
    missing = migrate("--data-dir", str(tmp_path / "nothing"), "--to-data-dir", str(tmp_path / "t"))
    assert missing.returncode == 2 and "no meterline store" in missing.stderr
    no_target = migrate("--data-dir", str(data))
    assert no_target.returncode == 2 and "--to CONFIG or --to-data-dir" in no_target.stderr
    bad_ns = migrate("--data-dir", str(data), "--to-data-dir", str(tmp_path / "t"), "--namespace", "no way")
    assert bad_ns.returncode == 2 and "not a valid namespace" in bad_ns.stderr


SCALE_METERS = """
[[meters]]
slug = "tokens"
event_type = "llm"
aggregation = "SUM"
value_property = "$.n"
group_by = { m = "$.m" }

[[meters]]
slug = "calls"
event_type = "llm"
aggregation = "COUNT"
group_by = { m = "$.m" }
"""


def test_into_a_scale_deployment_while_its_nodes_run(source: Any, scale_stack: Stack, tmp_path: Path) -> None:
    """Into a live scale deployment (an API node and a sink worker running): every event
    through its dedupe store and Kafka topic, the same totals per subject, group and hour once
    the worker has applied them, and a second run finds every event already there."""
    server, data = source
    with site(scale_stack, tmp_path / "site", extra=SCALE_METERS) as target:
        target.worker()
        port = free_port()
        target.node(port)
        node = Server(f"http://127.0.0.1:{port}", target.key("default"), target.dir, target.processes[-1], port)
        first = migrate("--data-dir", str(data), "--to", str(target.config_path))
        assert first.returncode == 0, first.stderr
        assert "read 43 events" in first.stdout and "accepted 43," in first.stdout
        again = migrate("--data-dir", str(data), "--to", str(target.config_path))
        assert again.returncode == 0, again.stderr
        assert "accepted 0, already there 43, conflicting 0" in again.stdout
        for meter in METERS:
            want = totals(server, meter["slug"])
            deadline = time.monotonic() + 120
            while (got := totals(node, meter["slug"])) != want and time.monotonic() < deadline:
                time.sleep(0.5)  # the sink worker applies what the migration wrote to the topic
            assert got == want
        assert len(totals(node, "tokens")) > 20
