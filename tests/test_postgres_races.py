"""The PostgreSQL catalog and billing stores under concurrent writers: several API nodes (threads,
each with its own pool) racing for the same customer key, subject, plan version, first API key,
alert and invoice period. The database's unique keys and locks must let exactly one win, and
invoice numbers must stay gap-free."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
import psycopg
import pytest
from contract.billing_kit import APRIL, MARCH
from contract.test_billing_stores import invoice, plan, sub
from contract.test_notifications import _channel, _rule
from postgres_server import fresh_schema, server
from psycopg.conninfo import make_conninfo

from meterline.adapters.memory.billing_usage import MemoryPeriodUsage
from meterline.adapters.postgres.billing import billing_stores
from meterline.adapters.postgres.catalog import PgCatalog
from meterline.domain.auth.keys import Scope, hash_key, mint
from meterline.domain.clock import FixedClock
from meterline.domain.customers.model import CustomerInput
from meterline.domain.errors import Conflict
from meterline.ports.billing_invoices import InvoiceTransaction
from meterline.ports.notifications import EventFilter

NS = "default"
NODES = 6
T = TypeVar("T")


@pytest.fixture
def nodes() -> Iterator[list[PgCatalog]]:
    clock = FixedClock(MARCH)
    with fresh_schema(server()) as dsn:
        catalogs = [PgCatalog.open(dsn, clock.now_us, pool_size=2)]  # migrates before the race
        catalogs += [PgCatalog.open(dsn, clock.now_us, pool_size=2) for _ in range(NODES - 1)]
        try:
            yield catalogs
        finally:
            for c in catalogs:
                c.close()


def race(nodes: list[PgCatalog], work: Callable[[int, PgCatalog], T]) -> list[T | BaseException]:
    """Run ``work`` on every node at once; each result or the exception it raised."""
    start = threading.Barrier(len(nodes))
    results: list[T | BaseException] = [RuntimeError("not run")] * len(nodes)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i, nodes[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def conflicts(results: list[Any]) -> list[str]:
    return sorted(r.code for r in results if isinstance(r, Conflict))


def test_one_customer_per_key_and_one_owner_per_subject(nodes: list[PgCatalog]) -> None:
    same_key = race(nodes, lambda i, n: n.customers.create(NS, CustomerInput("acme", subject_keys=[f"s{i}"])))
    assert len([r for r in same_key if not isinstance(r, BaseException)]) == 1
    assert conflicts(same_key) == ["customer_exists"] * (NODES - 1)
    same_subject = race(nodes, lambda i, n: n.customers.create(NS, CustomerInput(f"c{i}", subject_keys=["shared"])))
    winners = [r.customer.key for r in same_subject if not isinstance(r, BaseException)]
    assert len(winners) == 1 and conflicts(same_subject) == ["subject_claimed"] * (NODES - 1)
    owner = nodes[0].customers.by_subject(NS, "shared")
    assert owner is not None and owner.key == winners[0]


def test_plan_versions_are_numbered_without_gaps_or_twins(nodes: list[PgCatalog]) -> None:
    def add(i: int, n: PgCatalog) -> int:
        stores = billing_stores(n.db, n.customers, n.meters, MemoryPeriodUsage(), lambda: MARCH)
        return stores.plans.add(NS, "pro", lambda latest: plan(version=latest + 1)).version

    assert sorted(race(nodes, add)) == list(range(1, NODES + 1))  # type: ignore[type-var]


def test_only_one_first_key_is_bootstrapped(nodes: list[PgCatalog]) -> None:
    def first(i: int, n: PgCatalog) -> bool:
        key, secret = mint(NS, f"k{i}", frozenset({Scope.ADMIN}), MARCH)
        return n.keys.add(key, hash_key(secret), only_if_none=True)

    assert sorted(race(nodes, first)) == [False] * (NODES - 1) + [True]  # type: ignore[type-var]
    assert len(nodes[0].keys.list(None)) == 1


def test_an_alert_fires_once_across_nodes(nodes: list[PgCatalog]) -> None:
    rule = _rule("r1", ["c1"])

    def fire(i: int, n: PgCatalog) -> str | None:
        return n.notifications.fire(NS, rule, "acme", "api", "80", 0, lambda e: msgspec.json.encode({"id": e}),
                                    MARCH, ["c1"])  # fmt: skip

    fired = [r for r in race(nodes, fire) if r is not None]
    assert len(fired) == 1 and isinstance(fired[0], str)
    assert nodes[0].notifications.events(NS, EventFilter(), limit=10, offset=0)[0] == 1


def test_a_period_is_invoiced_once_with_gap_free_numbers(nodes: list[PgCatalog]) -> None:
    first = billing_stores(nodes[0].db, nodes[0].customers, nodes[0].meters, MemoryPeriodUsage(), lambda: MARCH)
    for s in ("s1", "s2"):
        first.subscriptions.add(sub(s, "c1", MARCH), lambda _: None)

    def finalize(i: int, n: PgCatalog) -> list[str]:
        stores = billing_stores(n.db, n.customers, n.meters, MemoryPeriodUsage(), lambda: MARCH)

        def work(tx: InvoiceTransaction) -> list[str]:
            made = []
            for s in ("s1", "s2"):  # a billing run: skip what another node invoiced already
                if tx.invoice_for(s, MARCH, "") is None:
                    new = invoice(tx, "c1", s, MARCH, APRIL)
                    tx.store(new)
                    made.append(new.number)
            return made

        return stores.finalizing.run(work)

    results = race(nodes, finalize)
    numbers = sorted(n for r in results if isinstance(r, list) for n in r)
    assert numbers == ["INV-1", "INV-2"]
    assert [r.number for r in first.invoices.list(NS)] == ["INV-1", "INV-2"]


def test_connections_the_server_closed_are_replaced_not_failed() -> None:
    """A restart or failover ends every server connection: the next calls still succeed."""
    clock = FixedClock(MARCH)
    name = f"victim-{uuid.uuid4().hex[:12]}"
    with fresh_schema(server()) as dsn:
        catalog = PgCatalog.open(make_conninfo(dsn, application_name=name), clock.now_us, pool_size=3)
        try:
            catalog.customers.create(NS, CustomerInput("acme"))
            with psycopg.connect(server(), autocommit=True) as admin:
                ended = admin.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (name,),
                ).fetchone()
            assert ended is not None and ended[0] >= 1
            for _ in range(5):  # more calls than the pool holds connections
                assert catalog.customers.get(NS, "acme").key == "acme"
        finally:
            catalog.close()


def test_dispatchers_of_several_nodes_never_get_the_same_delivery(nodes: list[PgCatalog]) -> None:
    channels = [f"c{i}" for i in range(5)]
    for c in channels:
        nodes[0].notifications.put_channel(_channel(c))
    for i in range(20):
        rule = _rule(f"r{i}", channels)
        nodes[0].notifications.fire(NS, rule, "acme", "api", "80", 0, lambda e: b"{}", MARCH, channels)
    handed = race(nodes, lambda i, n: [(d.event_id, d.channel.id) for d in n.notifications.due(MARCH, 1000)])
    pairs = [p for r in handed if isinstance(r, list) for p in r]
    assert len(pairs) == 100 and len(set(pairs)) == 100  # every delivery, each to one node
    assert nodes[1].notifications.due(MARCH + 299_000_000, 1000) == []  # held while being attempted
    again = nodes[1].notifications.due(MARCH + 300_000_000, 1000)  # its dispatcher died: due again
    assert len(again) == 100
