"""The Ledger contract: idempotent appends with an outcome per event, positions, reading in
sequence order and listing with filters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contract.conftest import ADAPTERS, T0_US, Stores, open_stores
from contract.events import append, candidates, event, statuses
from meterline.domain.events.model import Reason, Status
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.ports.ledger import Appended, EventFilter

NS = "default"
ACCEPTED, DUPLICATE, CONFLICT = (Status.ACCEPTED, False), (Status.DUPLICATE, False), (Status.DUPLICATE, True)


def seqs(ledger: Any, after: int = 0, limit: int = 1000) -> list[int]:
    return [e.seq for e in ledger.read(after, limit)]


def test_an_empty_ledger_is_at_position_zero(ledger: Any) -> None:
    assert ledger.position() == 0
    assert ledger.read(0, 10) == []
    assert ledger.list(NS, EventFilter(), limit=10) == []


def test_appends_answer_outcomes_in_request_order_and_the_position_covering_them(ledger: Any) -> None:
    first = ledger.append(NS, candidates(NS, T0_US, event("a"), event("b"), event("c"))).result(10)
    assert isinstance(first, Appended)
    assert [(o.index, o.id, o.source) for o in first] == [(0, "a", "src"), (1, "b", "src"), (2, "c", "src")]
    assert statuses(first) == [ACCEPTED] * 3
    assert first.position == 3 == ledger.position()
    second = ledger.append(NS, candidates(NS, T0_US, event("d"), event("e"))).result(10)
    assert second.position == 5 == ledger.position()
    assert seqs(ledger) == [1, 2, 3, 4, 5]


def test_a_request_of_only_duplicates_answers_the_unchanged_position(ledger: Any) -> None:
    append(ledger, NS, T0_US, event("a"), event("b"))
    again = ledger.append(NS, candidates(NS, T0_US, event("a"))).result(10)
    assert statuses(again) == [DUPLICATE]
    assert again.position == 2 == ledger.position()


def test_duplicates_within_one_request_first_payload_wins(ledger: Any) -> None:
    outcomes = append(ledger, NS, T0_US, event("a", v=1), event("a", v=1), event("a", v=2), event("b"))
    assert statuses(outcomes) == [ACCEPTED, DUPLICATE, CONFLICT, ACCEPTED]
    entries = ledger.read(0, 10)
    assert [e.seq for e in entries] == [1, 2]
    assert b'"v":1' in entries[0].raw


def test_duplicates_across_requests_first_payload_wins(ledger: Any) -> None:
    append(ledger, NS, T0_US, event("a", v=1))
    assert statuses(append(ledger, NS, T0_US, event("a", v=1))) == [DUPLICATE]
    assert statuses(append(ledger, NS, T0_US, event("a", v=2))) == [CONFLICT]
    assert statuses(append(ledger, NS, T0_US, event("a", subject="other", v=1))) == [CONFLICT]
    assert statuses(append(ledger, NS, T0_US, event("a", time="2026-03-01T11:00:01Z", v=1))) == [CONFLICT]
    assert [e.raw.count(b'"v":1') for e in ledger.read(0, 10)] == [1]
    assert ledger.position() == 1


def test_the_key_is_namespace_source_and_id(ledger: Any) -> None:
    append(ledger, NS, T0_US, event("a"))
    assert statuses(append(ledger, NS, T0_US, event("a", source="elsewhere"))) == [ACCEPTED]
    assert statuses(append(ledger, "other", T0_US, event("a"))) == [ACCEPTED]
    assert statuses(append(ledger, "other", T0_US, event("a"))) == [DUPLICATE]
    assert [(e.seq, e.namespace, e.source) for e in ledger.read(0, 10)] == [
        (1, NS, "src"),
        (2, NS, "elsewhere"),
        (3, "other", "src"),
    ]


@pytest.mark.parametrize("kind", ADAPTERS)
def test_duplicates_across_a_reopen(kind: str, tmp_path: Path) -> None:
    if kind == "memory":
        pytest.skip("a memory ledger lives as long as its process: there is nothing to reopen")
    opened = open_stores(kind, tmp_path)
    stores = next(opened)
    append(stores.ledger, NS, T0_US, event("a", v=1), event("b", v=1))
    opened.close()
    opened = open_stores(kind, tmp_path)
    stores = next(opened)
    try:
        assert stores.ledger.position() == 2
        outcomes = append(stores.ledger, NS, T0_US, event("a", v=1), event("b", v=2), event("c"))
        assert statuses(outcomes) == [DUPLICATE, CONFLICT, ACCEPTED]
        assert outcomes.position == 3 == stores.ledger.position()  # type: ignore[attr-defined]
        assert seqs(stores.ledger) == [1, 2, 3]
    finally:
        opened.close()


def test_rejected_events_take_no_position_and_leave_their_key_free(ledger: Any) -> None:
    outcomes = append(ledger, NS, T0_US, event("a"), b'{"id": "b", "source": "src"}', b"42", event("c"))
    assert [o.status for o in outcomes] == [Status.ACCEPTED, Status.REJECTED, Status.REJECTED, Status.ACCEPTED]
    assert outcomes[1].reason is Reason.MISSING_FIELD and outcomes[1].id == "b"
    assert outcomes[2].reason is not None and outcomes[2].id is None
    assert outcomes.position == 2 == ledger.position()  # type: ignore[attr-defined]
    assert statuses(append(ledger, NS, T0_US, event("b"))) == [ACCEPTED]  # a fixed retry is new


def test_an_event_a_live_meter_cannot_read_is_rejected_as_a_whole(stores: Stores) -> None:
    stores.meters.create(NS, MeterSpec(slug="s", event_type="t", aggregation=Aggregation.SUM, value_property="$.v"))
    stores.meters.create(NS, MeterSpec(slug="n", event_type="t", aggregation=Aggregation.COUNT))
    outcomes = append(stores.ledger, NS, T0_US, event("a", v=1), event("b", v="x"), event("c"), event("d", type="u"))
    assert [o.status for o in outcomes] == [Status.ACCEPTED, Status.REJECTED, Status.REJECTED, Status.ACCEPTED]
    assert {outcomes[1].reason, outcomes[2].reason} == {Reason.UNREADABLE_VALUE}
    assert "'s'" in (outcomes[1].message or "")
    assert [e.seq for e in stores.ledger.read(0, 10)] == [1, 2]
    assert statuses(append(stores.ledger, NS, T0_US, event("b", v=2))) == [ACCEPTED]  # its key stayed free
    assert statuses(append(stores.ledger, "other", T0_US, event("e", v="x"))) == [ACCEPTED]  # not its namespace


def test_a_group_value_over_the_cardinality_cap_rejects_the_event(stores: Stores) -> None:
    from contract.conftest import CAP

    spec = MeterSpec(slug="g", event_type="t", aggregation=Aggregation.COUNT, group_by={"r": "$.r"})
    stores.meters.create(NS, spec)
    full = [event(f"e{i}", r=f"r{i}") for i in range(CAP)]
    assert statuses(append(stores.ledger, NS, T0_US, *full)) == [ACCEPTED] * CAP
    outcomes = append(stores.ledger, NS, T0_US, event("over", r="new"), event("known", r="r7"), event("none"))
    assert [o.status for o in outcomes] == [Status.REJECTED, Status.ACCEPTED, Status.ACCEPTED]
    assert outcomes[0].reason is Reason.GROUP_CARDINALITY
    assert stores.ledger.position() == CAP + 2


def test_read_after_an_offset_in_sequence_order(stores: Stores) -> None:
    ledger = stores.ledger
    append(ledger, NS, T0_US, event("a", time="2026-03-01T10:00:00Z"), event("b", subject="c2"))
    stores.clock.advance(5)
    append(ledger, "other", T0_US, event("c", type="u", time="2026-02-01T00:00:00.000001Z"))
    assert seqs(ledger, 0, 2) == [1, 2]
    assert seqs(ledger, 2, 10) == [3]
    assert seqs(ledger, 1, 1) == [2]
    assert ledger.read(3, 10) == [] and ledger.read(0, 0) == []
    a, b, c = ledger.read(0, 10)
    assert (a.namespace, a.source, a.type, a.subject, a.time_us) == (NS, "src", "t", "c1", T0_US - 7_200_000_000)
    assert (b.subject, b.received_us, c.received_us) == ("c2", T0_US, T0_US + 5_000_000)
    assert (c.namespace, c.type, c.time_us) == ("other", "u", 1_769_904_000_000_001)
    assert b'"id":"c"' in c.raw


def test_list_is_newest_first_per_namespace_with_filters(stores: Stores) -> None:
    ledger = stores.ledger
    append(ledger, NS, T0_US, event("a-1", subject="cust-1", time="2026-03-01T09:00:00Z"))
    stores.clock.advance(10)
    append(ledger, NS, T0_US, event("b-2", subject="cust-2", time="2026-03-01T10:00:00Z"))
    append(ledger, "other", T0_US, event("a-3", subject="cust-1"))
    stores.clock.advance(10)
    append(ledger, NS, T0_US, event("a-4", subject="x", time="2026-03-01T11:00:00Z"))

    def listed(**f: Any) -> list[int]:
        return [e.seq for e in ledger.list(NS, EventFilter(**f), limit=100)]

    assert listed() == [4, 2, 1]
    assert [e.seq for e in ledger.list(NS, EventFilter(), limit=2)] == [4, 2]
    assert listed(subject="cust") == [2, 1]
    assert listed(event_id="a-") == [4, 1]
    assert listed(event_id="b-2", subject="cust-1") == []
    hour = 3_600_000_000
    assert listed(start_us=T0_US - 2 * hour) == [4, 2]  # inclusive
    assert listed(end_us=T0_US - 2 * hour) == [2, 1]
    assert listed(start_us=T0_US - 2 * hour, end_us=T0_US - 2 * hour) == [2]
    assert listed(received_from_us=T0_US + 10_000_000) == [4, 2]
    assert listed(received_to_us=T0_US + 10_000_000) == [2, 1]
    got = ledger.list("other", EventFilter(), limit=10)
    assert [(e.seq, e.namespace, e.received_us) for e in got] == [(3, "other", T0_US + 10_000_000)]
    assert b'"id":"a-3"' in got[0].raw


def test_list_filters_source_and_type_exactly_and_pages_by_sequence(stores: Stores) -> None:
    ledger = stores.ledger
    append(ledger, NS, T0_US, event("e1", source="web", type="click"), event("e2", source="webhooks", type="click"))
    append(ledger, NS, T0_US, event("e3", source="web", type="view"), event("e4", source="web", type="click"))

    def listed(**f: Any) -> list[int]:
        return [e.seq for e in ledger.list(NS, EventFilter(**f), limit=100)]

    assert listed(source="web") == [4, 3, 1]  # exact: not "webhooks"
    assert listed(type="click") == [4, 2, 1]
    assert listed(source="web", type="click") == [4, 1]
    assert listed(before_seq=4) == [3, 2, 1]
    assert listed(before_seq=2, source="web") == [1]
    assert [e.seq for e in ledger.list(NS, EventFilter(before_seq=4), limit=2)] == [3, 2]
