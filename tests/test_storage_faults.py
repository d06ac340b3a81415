"""Storage faults on a real server: failing fsync/fdatasync (strace fault injection) and a full
disk (a small tmpfs). Each answers 503 storage_unavailable with Retry-After, /readyz says not
ready (METER-001) until a commit succeeds again, the server recovers once the fault clears, and
after kill -9 + restart during a fault no event answered 503 is in the ledger while every 2xx
one is there exactly once (the fsync-failure trap: see meterline.adapters.sqlite.faults)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import Server, wait_ready
from faults import STARTUP_SECONDS, disk_full, events, failing_syscalls, kill9, launch, ledger_ids, post, tmpfs

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)


def assert_storage_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["code"] == "storage_unavailable" and body["operationalCode"] == "METER-001"
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1


def assert_not_ready(server: Server) -> None:
    r = httpx.get(f"{server.url}/readyz", timeout=30)
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["code"] == "not_ready" and body["operationalCode"] == "METER-001"
    assert [c["operationalCode"] for c in body["checks"]] == ["METER-001"]


def refused_in_parallel(server: Server, prefix: str, requests: int, n: int, pad: int = 0) -> list[str]:
    """Send ``requests`` batches at once; every one must be refused. Returns their event ids."""
    batches = [events(f"{prefix}-{i}", n, pad) for i in range(requests)]
    with ThreadPoolExecutor(requests) as pool:
        answers = list(pool.map(lambda b: post(server, b), batches))
    for r in answers:
        assert_storage_unavailable(r)
    return [str(e["id"]) for b in batches for e in b]


def check_after_restart(data_dir: Path, log: Path, acked: list[str], refused: list[str]) -> None:
    server = launch(data_dir, log)
    try:
        ledger = ledger_ids(data_dir)
        assert {i: ledger.get(i) for i in acked} == dict.fromkeys(acked, 1), (
            "an acknowledged event is missing or doubled"
        )
        assert not set(refused) & set(ledger), "an event answered 503 is in the ledger after the restart"
        assert set(ledger) == set(acked)
        # and the store never saw them: sent again now, each is accepted, not a duplicate
        for start in range(0, len(refused), 1000):
            ids = refused[start : start + 1000]
            batch = [{"specversion": "1.0", "id": i, "source": "faults", "type": "t", "subject": "acme"} for i in ids]
            report = post(server, batch, Prefer="return=representation")
            assert report.status_code == 200 and report.json()["accepted"] == len(ids), report.text
    finally:
        server.stop()


def test_failing_fsync_answers_503_recovers_and_nothing_refused_reappears(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    server = launch(data_dir, log)
    acked: list[str] = []
    try:
        first = events("ok-1", 20)
        assert post(server, first).status_code == 204
        acked += [str(e["id"]) for e in first]
        with failing_syscalls(server.process.pid):
            refused = refused_in_parallel(server, "eio-1", 4, 50)
            assert_not_ready(server)
        wait_ready(server, STARTUP_SECONDS)  # the store is probed and commits again, by itself
        second = events("ok-2", 20)
        assert post(server, second).status_code == 204
        acked += [str(e["id"]) for e in second]
        with failing_syscalls(server.process.pid):
            refused += refused_in_parallel(server, "eio-2", 4, 50)
            assert_not_ready(server)
            kill9(server)  # while every sync still fails: nothing after the 503s could heal the log
    finally:
        server.stop()
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    assert any(x.get("operationalCode") == "METER-001" and "SQLITE_IOERR_FSYNC" in x["message"] for x in lines)
    check_after_restart(data_dir, log, acked, refused)


def test_full_disk_answers_503_recovers_and_nothing_refused_reappears(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "24m") as mount:
        data_dir, log = mount / "data", tmp_path / "server.log"
        server = launch(data_dir, log)
        acked: list[str] = []
        try:
            first = events("ok-1", 20)
            assert post(server, first).status_code == 204
            acked += [str(e["id"]) for e in first]
            with disk_full(mount):
                # each batch needs ~3 MB of fresh log: more than the log file holds so far
                refused = refused_in_parallel(server, "full-1", 2, 3000, pad=1000)
                assert_not_ready(server)
            wait_ready(server, STARTUP_SECONDS)
            second = events("ok-2", 20)
            assert post(server, second).status_code == 204
            acked += [str(e["id"]) for e in second]
            with disk_full(mount):
                refused += refused_in_parallel(server, "full-2", 2, 3000, pad=1000)
                assert_not_ready(server)
                kill9(server)
        finally:
            server.stop()
        check_after_restart(data_dir, log, acked, refused)
