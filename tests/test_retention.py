"""Retention of raw events (docs/retention.md): expired raw ledger events are removed in small
writer tasks while totals stay; ``meterline verify`` passes through the documented "pruned"
markers and still names an edited row that was kept; ``rebuild --check`` does not report pruned
hours; a correction of a pruned event is refused; the config refuses settings under which
pruning would change an answer. Through the real app (frozen clock) and the real CLI."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import T0_US, Api, build_api

from meterline.adapters.sqlite.database import DB_FILE
from meterline.config import load_config
from meterline.domain.errors import ConfigError

DAY = 86_400
RETENTION = {
    "retention": {"raw_events": "30d"},
    "ingest": {"dedupe_window": "P7D", "late_arrival_window": "P30D"},
    "reconcile": {"lookback": "P30D"},
}


def _event(n: int, at: str, value: int = 1) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": f"ev-{n}",
        "source": "ret-test",
        "type": "call",
        "subject": f"cust-{n % 2}",
        "time": at,
        "data": {"v": value},
    }


def _iso(us: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(us / 1e6, UTC).isoformat().replace("+00:00", "Z")


def prune(api: Api) -> int:
    """Run the store's pruners to the end, as their background loops would (the same objects)."""
    backend = api.client.app.state.system.backend  # type: ignore[attr-defined]
    api.client.app.state.system.aggregator.drain()  # type: ignore[attr-defined]
    while backend.dedupe_pruner.prune_once():
        pass
    removed = 0
    while (n := backend.retention.prune_once()) > 0:
        removed += n
    return removed


def total(api: Api) -> str:
    r = api.query("calls", {"from": _iso(T0_US - 3600 * 10**6), "to": _iso(api.clock.now_us() + 3600 * 10**6)})
    assert r.status_code == 200, r.text
    return str(sum(int(row["value"]) for row in r.json()["data"]))


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path, **RETENTION)


def seed(api: Api) -> None:
    assert api.create_meter(slug="calls", eventType="call", aggregation="SUM", valueProperty="$.v").status_code == 201
    old = [_event(n, _iso(T0_US - 600 * 10**6 + n * 10**6), n + 1) for n in range(6)]
    assert api.post_events(old).status_code == 204  # 21 in total
    api.clock.advance(40 * DAY)
    new = [_event(n, _iso(api.clock.now_us() - 60 * 10**6), 100) for n in range(6, 9)]
    assert api.post_events(new).status_code == 204  # 300 more


def test_expired_raw_events_are_removed_and_totals_stay(api: Api) -> None:
    seed(api)
    assert total(api) == "321"
    assert prune(api) == 6
    assert total(api) == "321"
    db = sqlite3.connect(api.data_dir / DB_FILE)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 3
    assert db.execute("SELECT count(*) FROM ledger_pruned").fetchone()[0] == 6
    metrics = api.client.get("/metrics").text
    assert "meterline_retention_pruned_events 6.0" in metrics
    assert prune(api) == 0
    late = api.create_meter(slug="late", eventType="call", aggregation="COUNT")
    assert late.status_code == 201
    assert late.headers["Meterline-Raw-Events-From"].startswith("2026-03-01T12:00:00")  # after the removed events
    api.client.app.state.system.aggregator.drain()  # type: ignore[attr-defined]
    counted = api.query("late", {"from": _iso(T0_US - 3600 * 10**6), "to": _iso(api.clock.now_us() + 60 * 10**6)})
    assert sum(int(row["value"]) for row in counted.json()["data"]) == 3  # it cannot see the removed 6
    edge = api.query("calls", {"from": _iso(T0_US - 630 * 10**6), "to": _iso(T0_US)})
    assert edge.status_code == 400 and edge.json()["code"] == "unaligned_range"  # its raw events are gone


def test_verify_passes_after_pruning_and_names_an_edited_kept_row(tmp_path: Path) -> None:
    gen = build_api(tmp_path, **RETENTION)
    api = next(gen)
    seed(api)
    assert prune(api) == 6
    for _ in gen:
        pass
    ok = cli(api.data_dir, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "(6 pruned, 0 erased)" in ok.stdout
    db = sqlite3.connect(api.data_dir / DB_FILE)
    db.execute("""UPDATE events SET raw = replace(raw, '100', '900') WHERE id = 'ev-7'""")
    db.commit()
    db.close()
    bad = cli(api.data_dir, "verify", "--skip-rollups")
    assert bad.returncode == 1
    assert "entry 8 (event 'ev-7' from source 'ret-test'" in bad.stdout + bad.stderr


def test_an_edited_pruned_marker_fails_verify(tmp_path: Path) -> None:
    gen = build_api(tmp_path, **RETENTION)
    api = next(gen)
    seed(api)
    assert prune(api) == 6
    for _ in gen:
        pass
    db = sqlite3.connect(api.data_dir / DB_FILE)
    db.execute("UPDATE ledger_pruned SET kept = zeroblob(32) WHERE seq = 3")
    db.commit()
    db.close()
    bad = cli(api.data_dir, "verify", "--skip-rollups")
    assert bad.returncode == 1
    assert "entry 3 (pruned entry) does not match the chain" in bad.stdout + bad.stderr


def test_an_edited_row_is_never_pruned(api: Api) -> None:
    seed(api)
    db = sqlite3.connect(api.data_dir / DB_FILE)
    db.execute("""UPDATE events SET raw = replace(raw, '"v":3', '"v":9') WHERE id = 'ev-2'""")
    db.commit()
    db.close()
    assert prune(api) == 2  # ev-0, ev-1; stops at ev-2
    backend = api.client.app.state.system.backend  # type: ignore[attr-defined]
    assert backend.retention.blocked is not None and "entry 3" in backend.retention.blocked
    assert "meterline_retention_blocked 1.0" in api.client.get("/metrics").text
    warnings = api.client.get("/readyz").json()["warnings"]
    assert [w["operationalCode"] for w in warnings if w["check"] == "retention"] == ["METER-006"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"retention": {"raw_events": "30d"}}, "needs ingest.dedupe_window"),
        (
            {"retention": {"raw_events": "30d"}, "ingest": {"dedupe_window": "P7D", "late_arrival_window": "P90D"}},
            "needs ingest.late_arrival_window",
        ),
        ({"retention": {"rollups": "365d"}}, 'rollups are kept "forever"'),
        ({**RETENTION, "reconcile": {"lookback": "P35D"}}, "shorter than reconcile.lookback"),
        (  # scale mode too: the raw table's TTL removes what the scheduled reconciliation reads
            {"storage": {"engine": "scale"}, "retention": {"raw_events": "30d"}, "reconcile": {"lookback": "P35D"}},
            "shorter than reconcile.lookback",
        ),
        ({"retention": {"raw_events": "soon"}}, "retention.raw_events"),
    ],
)
def test_config_refuses_retention_that_would_change_answers(
    overrides: dict[str, dict[str, object]], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_config_accepts_short_and_iso_durations() -> None:
    assert load_config(None, RETENTION).retention.raw_events is not None
    iso = {**RETENTION, "retention": {"raw_events": "P30D", "rollups": "forever"}}
    assert load_config(None, iso).retention.raw_events == load_config(None, RETENTION).retention.raw_events


def test_a_pruned_event_cannot_be_corrected_and_rebuild_keeps_pruned_hours(tmp_path: Path) -> None:
    gen = build_api(tmp_path, **RETENTION)
    api = next(gen)
    seed(api)
    assert prune(api) == 6
    void = {"source": "ret-test", "reason": "test traffic"}
    r = api.client.post("/api/v1/events/ev-1/void", json=void, headers=api.headers())
    assert r.status_code == 409 and r.json()["code"] == "event_pruned", r.text
    r = api.client.get("/api/v1/events/ev-1", params={"source": "ret-test"}, headers=api.headers())
    assert r.status_code == 404 and r.json()["code"] == "event_pruned"
    r = api.client.post("/api/v1/events/ev-42/void", json=void, headers=api.headers())
    assert r.status_code == 404 and r.json()["code"] == "event_not_found"
    back = {**_event(7, _iso(T0_US - 300 * 10**6), 100), "subject": "cust-1"}  # into a pruned hour of cust-1
    r = api.client.post("/api/v1/events/ev-7/amend", json={**void, "event": back}, headers=api.headers())
    assert r.status_code == 409 and r.json()["code"] == "event_pruned", r.text  # that hour lost its raw events
    r = api.client.post("/api/v1/events/ev-7/void", json=void, headers=api.headers())
    assert r.status_code == 201, r.text
    api.client.app.state.system.aggregator.drain()  # type: ignore[attr-defined]
    assert total(api) == "221"
    for _ in gen:
        pass
    check = cli(api.data_dir, "rebuild", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    rebuilt = cli(api.data_dir, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    reopened = build_api(tmp_path, **RETENTION)
    again = next(reopened)
    again.clock.advance(40 * DAY)
    assert total(again) == "221"  # the pruned hours' rollups were kept by the rebuild
    for _ in reopened:
        pass


def test_erasing_a_subject_whose_events_were_pruned(tmp_path: Path) -> None:
    gen = build_api(tmp_path, **RETENTION)
    api = next(gen)
    seed(api)
    assert prune(api) == 6  # cust-1 had ev-1, ev-3, ev-5 (removed) and ev-7 (kept)
    r = api.client.post("/api/v1/erasures", json={"subject": "cust-1", "reason": "request 7"}, headers=api.headers())
    assert r.status_code == 201, r.text
    assert r.json()["counts"]["ledgerEntries"] == 1
    assert total(api) == "321"
    for _ in gen:
        pass
    for name in (DB_FILE, DB_FILE + "-wal"):
        path = api.data_dir / name
        assert not path.exists() or b"cust-1" not in path.read_bytes()
    ok = cli(api.data_dir, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "(6 pruned, 1 erased)" in ok.stdout


def test_erased_entries_removed_later_stay_in_the_erasure_chain(tmp_path: Path) -> None:
    gen = build_api(tmp_path, **RETENTION)
    api = next(gen)
    seed(api)
    r = api.client.post("/api/v1/erasures", json={"subject": "cust-1", "reason": "request 8"}, headers=api.headers())
    assert r.status_code == 201, r.text
    assert r.json()["counts"]["ledgerEntries"] == 4  # ev-1, ev-3, ev-5 (expired later) and ev-7
    assert prune(api) == 6
    for _ in gen:
        pass
    conn = sqlite3.connect(api.data_dir / DB_FILE)
    kept = conn.execute("SELECT count(*) FROM ledger_erased l JOIN ledger_pruned p USING (seq)").fetchone()[0]
    conn.close()
    assert kept == 3  # the erased forms' digests the erasure chain links stay with the pruned markers
    done = cli(api.data_dir, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(6 pruned, 1 erased)" in done.stdout and "erasure chain: link 1," in done.stdout


def test_a_gauge_keeps_its_level_and_rebuilds_after_its_reading_was_pruned(tmp_path: Path) -> None:
    gen = build_api(tmp_path, **RETENTION)
    api = next(gen)
    spec = {"slug": "gb", "eventType": "disk", "aggregation": "TIME_WEIGHTED_SUM", "valueProperty": "$.gb"}
    assert api.client.post("/api/v1/meters", json=spec, headers=api.headers()).status_code == 201
    reading = {"specversion": "1.0", "source": "probe", "type": "disk", "subject": "acme"}
    first = {**reading, "id": "r-1", "time": _iso(T0_US - 1800 * 10**6), "data": {"gb": "10"}}
    assert api.post_events([first]).status_code == 204
    api.clock.advance(40 * DAY)
    second = {**reading, "id": "r-2", "time": _iso(api.clock.now_us() - 1800 * 10**6), "data": {"gb": "4"}}
    assert api.post_events([second]).status_code == 204
    window = {"from": _iso(T0_US - 3600 * 10**6), "to": _iso(api.clock.now_us())}

    def value() -> str:
        r = api.query("gb", window)
        assert r.status_code == 200, r.text
        return str(sum(Decimal(row["value"]) for row in r.json()["data"]))

    before = value()
    assert prune(api) == 1
    assert value() == before
    for _ in gen:
        pass
    check = cli(api.data_dir, "rebuild", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
