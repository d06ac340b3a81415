"""The quarantine of scale mode (``ports.quarantine``, docs/scale.md "The quarantine"): its
PostgreSQL store step by step, and a released event written to the log twice (a releaser that
died after writing and before marking it delivered) counted once by the sink workers.

The API-level behaviour shared with embedded mode (quarantined outcome, duplicates, listing,
release counted on the customer's save, the reject policy) is tested in both modes by
``tests/test_entitlements_api.py``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

import msgspec
import psycopg
import pytest
from conftest import Api, build_scale_api
from postgres_server import fresh_schema, server
from scale_site import Site

from meterline.adapters.postgres.catalog import PgCatalog
from meterline.domain.clock import FixedClock
from meterline.domain.customers.model import CustomerInput, UnknownSubjects
from meterline.domain.events.model import Event, Outcome
from meterline.ports.quarantine import Copy, Release, Screened
from meterline.services.quarantine import QuarantineReleaser, ReleasingCustomers
from meterline.services.screen_cache import ForgettingSettings, ScreenCache

T0_US = 1_772_366_400_000_000
NS = "ns"


def event(id_: str, subject: str = "newco", tokens: int = 1) -> Event:
    raw = msgspec.json.encode({"id": id_, "source": "s", "type": "llm", "subject": subject, "data": {"tokens": tokens}})
    return Event(NS, "s", id_, "llm", subject, T0_US, {"tokens": tokens}, raw, id_.encode())


@pytest.fixture
def pg() -> Iterator[tuple[PgCatalog, FixedClock, str]]:
    clock = FixedClock(T0_US)
    with fresh_schema(server()) as dsn:
        catalog = PgCatalog.open(dsn, clock.now_us, pool_size=2)
        try:
            yield catalog, clock, dsn
        finally:
            catalog.close()


def test_held_events_are_released_by_the_save_that_claims_their_subject(
    pg: tuple[PgCatalog, FixedClock, str],
) -> None:
    catalog, clock, _ = pg
    q = catalog.quarantine
    catalog.customers.set_policy(NS, UnknownSubjects.QUARANTINE)
    screened = q.screen(NS, ["newco", "acme"])
    assert screened.policy is UnknownSubjects.QUARANTINE and screened.owned == frozenset()
    assert q.hold(NS, "t1", [event("a"), event("b")], T0_US)
    assert q.hold(NS, "t2", [event("a")], T0_US)  # a retry after a lapsed claim: held under its token now
    assert [x.event_id for x in q.quarantined(NS, None, limit=10, after_id=0)] == ["a", "b"]
    assert q.take(10, 60_000_000) == []  # nothing released yet

    saved = catalog.customers.create(NS, CustomerInput(key="newco"))
    assert saved.released == 2
    assert q.screen(NS, ["newco"]).owned == frozenset({"newco"})
    assert q.quarantined(NS, None, limit=10, after_id=0) == []
    # a save holds the namespace's customer lock: an event of a claimed subject is not held
    assert not q.hold(NS, "t3", [event("c")], T0_US)

    taken = q.take(10, 60_000_000)
    assert [(r.event.id, r.token) for r in taken] == [("a", "t2"), ("b", "t1")]
    assert taken[0].event.data == {"tokens": 1} and taken[0].event.raw == event("a").raw
    assert q.take(10, 60_000_000) == []  # leased
    clock.advance(61)
    assert [r.event.id for r in q.take(10, 60_000_000)] == ["a", "b"]  # the lease lapsed: taken again
    q.delivered([(r.id, "accepted") for r in taken])
    clock.advance(61)
    assert q.take(10, 60_000_000) == []


class NothingReleased:
    """The release log of a test that holds no event: nothing may be written to it."""

    def write_released(self, releases: Sequence[Release]) -> Future[list[Outcome]]:
        raise AssertionError("nothing was held, so nothing is released")


def test_a_node_remembers_the_screen_briefly_and_forgets_its_own_changes(
    pg: tuple[PgCatalog, FixedClock, str],
) -> None:
    """``ScreenCache``: the policy and claimed subjects answer from memory for the TTL (a change
    made through another node shows after it), an unclaimed subject is never remembered, and
    what this node changes itself is asked again at once."""
    catalog, clock, _ = pg
    cache = ScreenCache(catalog.quarantine, clock.now_us, 1_000_000, UnknownSubjects.ACCEPT)
    settings = ForgettingSettings(catalog.customers, cache)
    releaser = QuarantineReleaser(catalog.quarantine, NothingReleased(), timeout=1)
    customers = ReleasingCustomers(catalog.customers, releaser, cache.forget)
    other_node = catalog.customers  # the same catalog, written without this node's cache

    assert cache.screen(NS, ["acme"]) == Screened(None, frozenset())  # default accept
    other_node.set_policy(NS, UnknownSubjects.REJECT)
    assert cache.screen(NS, ["acme"]).policy is None  # remembered: accept for up to the TTL
    clock.advance(1.001)
    assert cache.screen(NS, ["acme"]) == Screened(UnknownSubjects.REJECT, frozenset())

    other_node.create(NS, CustomerInput(key="acme"))  # unclaimed subjects are never remembered
    assert cache.screen(NS, ["acme", "newco"]) == Screened(UnknownSubjects.REJECT, frozenset({"acme"}))
    other_node.delete(NS, "acme")
    assert cache.screen(NS, ["acme"]).owned == frozenset({"acme"})  # a claimed subject is, for the TTL
    clock.advance(1.001)
    assert cache.screen(NS, ["acme"]).owned == frozenset()

    customers.create(NS, CustomerInput(key="acme"))
    assert cache.screen(NS, ["acme"]).owned == frozenset({"acme"})
    customers.delete(NS, "acme")  # through this node: forgotten at once
    assert cache.screen(NS, ["acme"]).owned == frozenset()
    settings.set_policy(NS, UnknownSubjects.QUARANTINE)
    assert cache.screen(NS, ["acme"]).policy is UnknownSubjects.QUARANTINE

    uncached = ScreenCache(catalog.quarantine, clock.now_us, 0, UnknownSubjects.ACCEPT)
    assert uncached.screen(NS, ["acme"]).policy is UnknownSubjects.QUARANTINE
    other_node.set_policy(NS, UnknownSubjects.ACCEPT)
    assert uncached.screen(NS, ["acme"]).policy is UnknownSubjects.ACCEPT  # TTL 0: asked every time


def test_a_released_event_counts_at_its_first_copy_only(pg: tuple[PgCatalog, FixedClock, str]) -> None:
    catalog, _, dsn = pg
    q = catalog.quarantine
    assert q.hold(NS, "t1", [event("a")], T0_US)
    catalog.customers.create(NS, CustomerInput(key="newco"))
    first, again = Copy(NS, "s", "a", "t1", "log:0@5"), Copy(NS, "s", "a", "t1", "log:0@9")
    assert q.settle([first]) == [True]
    assert q.settle([first]) == [True]  # a batch redone after a crash meets it at the same place
    assert q.settle([again]) == [False]  # the copy a second write left
    assert q.settle([Copy(NS, "s", "a", "other-token", "log:0@11")]) == [False]
    assert q.settle([Copy(NS, "s", "unknown", "t1", "log:0@12")]) == [False]
    # two copies in one batch: exactly one counts, and the same one again on a redo
    assert q.hold(NS, "t2", [event("b")], T0_US) is False  # newco is claimed now
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO quarantine (namespace, source, event_id, type, subject, time_us, received_us, digest, raw,"
            " token, released_us) VALUES (%s, 's', 'b', 'llm', 'newco', 0, 0, '', '', 't2', 1)",
            (NS,),
        )
    pair = [Copy(NS, "s", "b", "t2", "log:1@3"), Copy(NS, "s", "b", "t2", "log:1@4")]
    once = q.settle(pair)
    assert sorted(once) == [False, True]
    assert q.settle(pair) == once


@pytest.fixture
def scale_api(scale_site: Site, tmp_path: Path) -> Iterator[Api]:
    yield from build_scale_api(scale_site, tmp_path)


def test_a_release_written_twice_is_counted_once(scale_api: Api) -> None:
    api = scale_api
    assert (
        api.create_meter(slug="tokens", eventType="llm", aggregation="SUM", valueProperty="$.tokens").status_code == 201
    )
    api.client.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}, headers=api.headers())
    events = [
        {"specversion": "1.0", "id": f"q{i}", "source": "s", "type": "llm", "subject": "newco", "data": {"tokens": i}}
        for i in (1, 2, 3)
    ]
    r = api.post_events(events, Prefer="return=representation")
    assert {o["status"] for o in r.json()["events"]} == {"quarantined"}
    c = api.client.post("/api/v1/customers", json={"key": "newco"}, headers=api.headers())
    assert c.status_code == 201 and c.json()["released"] == {"accepted": 3, "rejected": 0}
    assert api.query("tokens").json()["data"][0]["value"] == 6

    # A releaser that wrote the events and died before marking them delivered: the next one
    # writes them again once the lease lapses (here: the lease cleared by hand).
    node = api.client.app.state.system  # type: ignore[attr-defined]
    # (this test's namespace only: other tests of the process share the site's tables)
    with psycopg.connect(api.config.postgres.dsn) as conn:
        row = conn.execute("SELECT namespace FROM customers WHERE id = %s", (c.json()["id"],)).fetchone()
        assert row is not None
        ns = row[0]
        conn.execute(
            "UPDATE quarantine SET delivered_us = NULL, lease_us = NULL WHERE released_us IS NOT NULL"
            " AND namespace = %s",
            (ns,),
        )
    again = node.releaser.release()
    assert sorted(r.event.id for r, _ in again if r.event.namespace == ns) == ["q1", "q2", "q3"]
    assert api.query("tokens").json()["data"][0]["value"] == 6  # waited for the second copies: skipped
    listed = api.client.get("/api/v1/events", params={"subject": "newco"}, headers=api.headers()).json()
    assert sorted(e["event"]["id"] for e in listed) == ["q1", "q2", "q3"]
    retry = api.post_events(events, Prefer="return=representation")
    assert {o["status"] for o in retry.json()["events"]} == {"duplicate"}
    assert api.query("tokens").json()["data"][0]["value"] == 6
