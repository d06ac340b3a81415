"""The Ledger contract's policies: the dedupe window and the unknown-subject policy
(reject, or quarantine until a customer claims the subject), for every kind with a ledger
joined to a customer store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.conftest import ADAPTERS, T0_US, Stores, open_stores
from contract.events import append, event, statuses
from meterline.domain.customers.model import CustomerInput, UnknownSubjects
from meterline.domain.events.model import Reason, Status
from meterline.domain.meters.model import Aggregation, MeterSpec

NS = "default"
ACCEPTED, DUPLICATE, CONFLICT = (Status.ACCEPTED, False), (Status.DUPLICATE, False), (Status.DUPLICATE, True)
QUARANTINED = (Status.QUARANTINED, False)


def opened(kind: str, tmp_path: Path, **ingest: Any) -> Iterator[Stores]:
    gen = open_stores(kind, tmp_path, ingest=ingest)
    yield next(gen)
    gen.close()


@pytest.fixture(params=ADAPTERS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def windowed(kind: str, tmp_path: Path) -> Iterator[Stores]:
    """Stores whose dedupe window is one hour."""
    yield from opened(kind, tmp_path, dedupe_window=3600)


@pytest.fixture
def quarantining(kind: str, tmp_path: Path) -> Iterator[Stores]:
    """Stores whose default unknown-subject policy is quarantine."""
    yield from opened(kind, tmp_path, unknown_subjects="quarantine")


def test_a_key_is_a_duplicate_within_the_window_and_new_after_it(windowed: Stores) -> None:
    ledger, clock = windowed.ledger, windowed.clock
    append(ledger, NS, clock.now_us(), event("a", v=1))
    clock.advance(1800)
    assert statuses(append(ledger, NS, clock.now_us(), event("a", v=1), event("a", v=2))) == [DUPLICATE, CONFLICT]
    clock.advance(2 * 3600)  # the first receipt is now older than the window
    assert statuses(append(ledger, NS, clock.now_us(), event("a", v=2))) == [ACCEPTED]
    assert statuses(append(ledger, NS, clock.now_us(), event("a", v=2))) == [DUPLICATE]  # a new window began
    assert [e.raw.count(b'"v":2') for e in ledger.read(0, 10)] == [0, 1]


def test_forever_is_the_default_window(kind: str, tmp_path: Path) -> None:
    for stores in opened(kind, tmp_path):
        append(stores.ledger, NS, T0_US, event("a"))
        stores.clock.advance(400 * 86_400)
        assert statuses(append(stores.ledger, NS, stores.clock.now_us(), event("a"))) == [DUPLICATE]


def test_the_reject_policy_dead_letters_unknown_subjects_and_frees_their_keys(kind: str, tmp_path: Path) -> None:
    for stores in opened(kind, tmp_path):
        stores.customers.set_policy(NS, UnknownSubjects.REJECT)
        stores.customers.create(NS, CustomerInput("acme", "Acme", ["known"]))
        outcomes = append(stores.ledger, NS, T0_US, event("a", subject="known"), event("b", subject="stranger"))
        assert [o.status for o in outcomes] == [Status.ACCEPTED, Status.REJECTED]
        assert outcomes[1].reason is Reason.UNKNOWN_SUBJECT
        assert statuses(append(stores.ledger, "other", T0_US, event("b", subject="stranger"))) == [ACCEPTED]
        stores.customers.create(NS, CustomerInput("str", "Stranger", ["stranger"]))
        assert statuses(append(stores.ledger, NS, T0_US, event("b", subject="stranger"))) == [ACCEPTED]


def test_quarantined_events_hold_their_key_and_are_released_once_in_arrival_order(quarantining: Stores) -> None:
    ledger, customers = quarantining.ledger, quarantining.customers
    outcomes = append(
        ledger, NS, T0_US, event("q1", subject="new"), event("k", subject="other"), event("q2", subject="new")
    )
    assert statuses(outcomes) == [QUARANTINED] * 3
    assert ledger.position() == 0 and ledger.read(0, 10) == []
    assert statuses(append(ledger, NS, T0_US, event("q1", subject="new"), event("q2", subject="new", v=9))) == [
        DUPLICATE,
        CONFLICT,
    ]
    held = customers.quarantined(NS, "new", limit=10, after_id=0)
    assert [q.event_id for q in held] == ["q1", "q2"]
    assert [q.event_id for q in customers.quarantined(NS, None, limit=10, after_id=held[0].id)] == ["k", "q2"]
    assert customers.quarantined("other-ns", None, limit=10, after_id=0) == []

    saved = customers.create(NS, CustomerInput("n", "New", ["new"]))
    assert (saved.released, saved.released_rejected) == (2, 0)
    assert [(e.seq, e.subject) for e in ledger.read(0, 10)] == [(1, "new"), (2, "new")]
    assert [b'"id":"q1"' in e.raw for e in ledger.read(0, 10)] == [True, False]
    assert [q.event_id for q in customers.quarantined(NS, None, limit=10, after_id=0)] == ["k"]
    assert statuses(append(ledger, NS, T0_US, event("q1", subject="new"), event("q3", subject="new"))) == [
        DUPLICATE,
        ACCEPTED,
    ]
    again = customers.replace(NS, "n", CustomerInput("n", "New", ["new"]))
    assert (again.released, again.released_rejected) == (0, 0)  # nothing released twice
    assert ledger.position() == 3


def test_a_namespace_policy_overrides_the_default(quarantining: Stores) -> None:
    quarantining.customers.set_policy("open", UnknownSubjects.ACCEPT)
    assert statuses(append(quarantining.ledger, "open", T0_US, event("a", subject="x"))) == [ACCEPTED]
    assert statuses(append(quarantining.ledger, NS, T0_US, event("a", subject="x"))) == [QUARANTINED]


def test_a_released_event_no_meter_can_read_is_dead_lettered_and_frees_its_key(quarantining: Stores) -> None:
    ledger, customers = quarantining.ledger, quarantining.customers
    append(ledger, NS, T0_US, event("ok", subject="new", v=1), event("bad", subject="new", v="x"))
    quarantining.meters.create(
        NS, MeterSpec(slug="s", event_type="t", aggregation=Aggregation.SUM, value_property="$.v")
    )
    saved = customers.create(NS, CustomerInput("n", "New", ["new"]))
    assert (saved.released, saved.released_rejected) == (1, 1)
    assert [b'"id":"ok"' in e.raw for e in ledger.read(0, 10)] == [True]
    assert statuses(append(ledger, NS, T0_US, event("bad", subject="new", v=2))) == [ACCEPTED]
    assert statuses(append(ledger, NS, T0_US, event("ok", subject="new", v=1))) == [DUPLICATE]
