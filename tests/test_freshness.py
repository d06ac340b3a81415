"""Every answer says how fresh it is: the ingest answer's ledger position, the position (and
receipt time) a usage answer reflects, read-your-writes by default, ``consistency=eventual``."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from conftest import T0_US, Api


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
    backend = api.client.app.state.ctx.backend  # type: ignore[attr-defined]
    release = threading.Event()
    apply = backend.usage.apply

    def held(batch):  # type: ignore[no-untyped-def]  # the aggregator stalls until released
        release.wait(30)
        return apply(batch)

    backend.usage.apply = held
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
