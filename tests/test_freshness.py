"""Every answer says how fresh it is: the ingest answer's ledger position, the position (and
receipt time) a usage answer reflects, read-your-writes by default, ``consistency=eventual``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import T0_US, Api, build_api, build_scale_api
from scale_site import Site, site
from stack.launch import Stack
from test_entitlements_api import check, value
from test_entitlements_api import ev as llm_event
from test_entitlements_api import setup as metered_entitlement

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)


def ev(i: int, tokens: int) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": "fresh",
        "type": "prompt",
        "subject": "acme",
        "time": "2026-03-01T11:00:00Z",
        "data": {"tokens": tokens},
    }


def test_ingest_then_read_states_positions_and_reads_its_own_writes(api: Api) -> None:
    assert (
        api.create_meter(slug="t", eventType="prompt", aggregation="SUM", valueProperty="$.tokens").status_code == 201
    )
    total = 0
    for i in range(1, 6):
        r = api.post_events([ev(i, i * 10)])
        assert r.status_code == 204
        position = int(r.headers["meterline-ledger-position"])
        assert position == i  # one event per request, in order
        total += i * 10
        q = api.query("t")
        assert q.status_code == 200
        assert [row["value"] for row in q.json()["data"]] == [total]  # no sleep: the read waited
        assert int(q.headers["meterline-as-of-position"]) >= position
        received = datetime.fromisoformat(q.headers["meterline-as-of"])
        assert received == datetime.fromtimestamp(T0_US / 1e6, UTC)  # the frozen clock at receipt


def test_duplicates_answer_a_position_covering_the_first_copy(api: Api) -> None:
    first = api.post_events([ev(1, 1), ev(2, 2)])
    again = api.post_events([ev(1, 1)])
    assert int(again.headers["meterline-ledger-position"]) >= int(first.headers["meterline-ledger-position"]) == 2


def test_eventual_consistency_does_not_wait_and_says_what_it_reflects(api: Api) -> None:
    created = api.create_meter(slug="t", eventType="prompt", aggregation="SUM", valueProperty="$.tokens")
    assert created.status_code == 201
    release = hold_aggregator(api)
    try:
        assert api.post_events([ev(1, 7)]).status_code == 204
        q = api.query("t", {"consistency": "eventual"})  # answered at once, from what is aggregated
        assert q.status_code == 200 and q.json()["data"] == []
        assert q.headers["meterline-as-of-position"] == "0" and "meterline-as-of" not in q.headers
    finally:
        release.set()
    q = api.query("t")
    assert [row["value"] for row in q.json()["data"]] == [7] and q.headers["meterline-as-of-position"] == "1"


def test_answers_without_usage_carry_no_freshness(api: Api) -> None:
    r = api.client.get("/api/v1/meters", headers=api.headers())
    assert r.status_code == 200 and "meterline-as-of-position" not in r.headers


@pytest.fixture
def lenient(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path, aggregation={"check_staleness": 60, "max_wait": 30})


def hold_aggregator(api: Api) -> threading.Event:
    """Stall the aggregator's next batch until the returned event is set."""
    backend = api.client.app.state.system.backend  # type: ignore[attr-defined]
    release = threading.Event()
    apply = backend.usage.apply

    def held(batch):  # type: ignore[no-untyped-def]
        release.wait(30)
        return apply(batch)

    backend.usage.apply = held
    return release


def test_checks_may_answer_within_the_configured_staleness_while_values_wait(lenient: Api) -> None:
    metered_entitlement(lenient)
    release = hold_aggregator(lenient)
    try:
        assert lenient.post_events([llm_event("e1", tokens=50)]).status_code == 204
        r = check(lenient, ("tokens", 100))  # behind for less than 60 s: answered at once, without e1
        assert r.json()["allowed"] is True and r.headers["meterline-as-of-position"] == "0"
    finally:
        release.set()
    assert value(lenient)["usage"] == 50  # a value waits, as every usage read
    r = check(lenient, ("tokens", 100))
    assert r.json()["allowed"] is False and r.headers["meterline-as-of-position"] == "1"


def test_consistency_values_other_than_strong_or_eventual_are_refused(api: Api) -> None:
    assert api.create_meter(slug="t", eventType="prompt", aggregation="COUNT").status_code == 201
    assert api.query("t", {"consistency": "strong"}).status_code == 200
    for bad in ("bogus", "", "EVENTUAL", "eventual "):
        r = api.query("t", {"consistency": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "invalid_consistency"


def test_a_position_from_an_earlier_ingest_is_waited_for_even_with_eventual_consistency(api: Api) -> None:
    created = api.create_meter(slug="t", eventType="prompt", aggregation="SUM", valueProperty="$.tokens")
    assert created.status_code == 201
    release = hold_aggregator(api)
    try:
        position = api.post_events([ev(1, 7)]).headers["meterline-ledger-position"]
        threading.Timer(0.3, release.set).start()  # the read below must wait for this to see e1
        q = api.query("t", {"consistency": "eventual"}, **{"Meterline-Min-Position": position})
        assert q.status_code == 200
        assert [row["value"] for row in q.json()["data"]] == [7]
        assert int(q.headers["meterline-as-of-position"]) >= int(position)
    finally:
        release.set()
    ahead = api.query("t", **{"Meterline-Min-Position": "999999"})  # past the head: the head
    assert ahead.status_code == 200 and ahead.headers["meterline-as-of-position"] == "1"


@pytest.mark.parametrize("bad", ["-1", "abc", "1e3", "1.0", "99999999999999999999", ""])
def test_a_position_that_is_not_a_whole_number_is_refused(api: Api, bad: str) -> None:
    assert api.create_meter(slug="t", eventType="prompt", aggregation="COUNT").status_code == 201
    r = api.query("t", **{"Meterline-Min-Position": bad})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_position"


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path, health={"max_aggregation_lag": 0.2, "check_interval": 0.05})


def readyz_warnings(api: Api) -> list[str]:
    r = api.client.get("/readyz")
    assert r.status_code == 200, r.text  # a lagging aggregator warns; the node stays ready
    return [w["check"] for w in r.json()["warnings"]]


def test_an_aggregator_behind_for_longer_than_the_threshold_is_a_readiness_warning(watched: Api) -> None:
    assert watched.create_meter(slug="t", eventType="prompt", aggregation="COUNT").status_code == 201
    release = hold_aggregator(watched)
    try:
        assert watched.post_events([ev(1, 1)]).status_code == 204
        deadline = time.monotonic() + 20
        while "aggregation_lag" not in readyz_warnings(watched):
            assert time.monotonic() < deadline, "no aggregation_lag warning while the aggregator was held"
            time.sleep(0.05)
    finally:
        release.set()
    assert [row["value"] for row in watched.query("t").json()["data"]] == [1]
    deadline = time.monotonic() + 20
    while "aggregation_lag" in readyz_warnings(watched):
        assert time.monotonic() < deadline, "the warning did not clear once the aggregator caught up"
        time.sleep(0.05)


def test_embedded_mode_refuses_scale_modes_log_positions(api: Api) -> None:
    api.create_meter(slug="t", eventType="llm", aggregation="SUM", valueProperty="$.tokens")
    r = api.query("t", **{"Meterline-Min-Log-Positions": "0:5"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_position"
    assert "Meterline-Min-Position" in r.json()["detail"]
    for bad in ("0", "a:1", "0:1,", "1:-2", ":3"):
        r = api.query("t", **{"Meterline-Min-Log-Positions": bad})
        assert r.status_code == 400 and r.json()["code"] == "invalid_position", bad


@pytest.fixture
def scale_pair(scale_stack: Stack, tmp_path: Path) -> Iterator[tuple[Site, Api, Api]]:
    """Two in-process API nodes of a site of their own, with no sink worker running yet."""
    with site(scale_stack, tmp_path / "site") as s:
        waits = {"aggregation": {"max_wait": 60}}
        first = build_scale_api(s, tmp_path / "a", **waits)
        a = next(first)
        second = build_scale_api(s, tmp_path / "b", **waits)
        b = next(second)
        b.key = a.key  # the same namespace: the key is valid on every node
        try:
            yield s, a, b
        finally:
            for gen in (second, first):
                gen.close()


def test_log_positions_from_one_node_make_a_read_through_another_wait_for_them(
    scale_pair: tuple[Site, Api, Api],
) -> None:
    s, a, b = scale_pair
    assert a.create_meter(slug="t", eventType="prompt", aggregation="SUM", valueProperty="$.tokens").status_code == 201
    r = a.post_events([ev(i, 10 + i) for i in range(5)])
    assert r.status_code == 204 and "meterline-ledger-position" not in r.headers
    token = r.headers["Meterline-Log-Positions"]
    positions = dict(pair.split(":") for pair in token.split(","))
    assert positions and all(int(o) > 0 for o in positions.values())
    wrong = b.query("t", **{"Meterline-Min-Position": "5"})
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_position"
    assert "Meterline-Min-Log-Positions" in wrong.json()["detail"]
    # No worker has applied anything yet: node b, which wrote nothing, would answer at once; with
    # node a's positions it waits until the worker started now has applied them.
    s.worker()
    q = b.query("t", {"consistency": "eventual"}, **{"Meterline-Min-Log-Positions": token})
    assert q.status_code == 200, q.text
    assert q.json()["data"][0]["value"] == sum(10 + i for i in range(5))
    assert int(q.headers["Meterline-As-Of-Position"]) >= 5
