"""One fixture per port: every test in this directory runs against each adapter of the ports it uses.

``PORTS`` says which ports each kind of adapter implements; a test runs once per kind that has
every port fixture it asks for (a test asking for ``stores`` alone needs every port, unless its
module says which it uses: ``pytestmark = pytest.mark.ports("usage", ...)``). A new adapter joins
by adding its kind to ``PORTS`` and a branch to :func:`open_stores`; nothing else is edited.
Scale kinds (``SCALE``) run on the local stack, started once per test process (``scale_stack``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from postgres_server import fresh_schema, server
from stack.launch import Stack

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.usage import ClickHouseUsage
from meterline.adapters.memory.customers import MemoryCustomers
from meterline.adapters.memory.entitlements import MemoryEntitlements, MemoryFeatures, MemoryGrants
from meterline.adapters.memory.keys import MemoryKeys
from meterline.adapters.memory.ledger import MemoryLedger
from meterline.adapters.memory.meters import MemoryMeters
from meterline.adapters.memory.notifications import MemoryNotifications
from meterline.adapters.memory.portal import MemoryPortal
from meterline.adapters.memory.usage import MemoryUsage
from meterline.adapters.postgres.catalog import PgCatalog
from meterline.adapters.sqlite.keys import SqliteKeys
from meterline.bootstrap import open_backend
from meterline.config import load_config
from meterline.domain.clock import FixedClock
from meterline.domain.customers.model import UnknownSubjects

T0_US = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z
CATALOG = frozenset({"customers", "keys", "meters", "features", "entitlements", "grants", "notifications", "portal"})
EVERY = CATALOG | {"ledger", "usage"}
PORTS: dict[str, frozenset[str]] = {
    "sqlite": EVERY,
    "memory": EVERY,
    "postgres": CATALOG,
    "clickhouse": frozenset({"usage", "ledger", "meters"}),  # the usage store; meters and ledger in memory
}
SCALE = frozenset({"clickhouse"})
"""The kinds that need the local stack."""
ADAPTERS = [kind for kind, ports in PORTS.items() if ports == EVERY]
"""The kinds with every port (the suites that open whole stores themselves)."""
CAP = 1000
"""The groupBy cardinality cap of every store here (the config default)."""


@dataclass
class Stores:
    """The adapters of one kind, sharing one store and one frozen clock."""

    kind: str
    clock: FixedClock
    customers: Any
    keys: Any
    meters: Any
    features: Any
    entitlements: Any
    grants: Any
    notifications: Any
    portal: Any
    ledger: Any
    usage: Any


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ports(*names): the ports a test of whole stores uses")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("ports")
        wanted = set(marker.args) if marker else (set(metafunc.fixturenames) & EVERY) or EVERY
        metafunc.parametrize("store_kind", kinds(wanted))


def kinds(wanted: set[str]) -> list[str]:
    """The kinds of adapter that implement every port in ``wanted``."""
    return [kind for kind, ports in PORTS.items() if wanted <= ports]


def open_stores(
    kind: str, tmp_path: Path, stack: Stack | None = None, *, ingest: dict[str, Any] | None = None
) -> Iterator[Stores]:
    """The stores of ``kind``; ``ingest`` sets the ledger's ``[ingest]`` options
    (``unknown_subjects``, ``dedupe_window`` in seconds) where the kind has a ledger."""
    clock = FixedClock(T0_US)
    ingest = ingest or {}
    if kind == "clickhouse":
        assert stack is not None, "the clickhouse adapters run on the local stack"
        yield from _clickhouse_stores(clock, stack)
        return
    if kind == "postgres":
        with fresh_schema(server()) as dsn:
            pg = PgCatalog.open(dsn, clock.now_us, pool_size=2)
            try:
                yield Stores(
                    kind,
                    clock,
                    pg.customers,
                    pg.keys,
                    pg.meters,
                    pg.features,
                    pg.entitlements,
                    pg.grants,
                    pg.notifications,
                    pg.portal,
                    None,
                    None,
                )
            finally:
                pg.close()
        return
    if kind == "memory":
        yield memory_stores(clock, **ingest)
        return
    window = {} if "dedupe_window" not in ingest else {"dedupe_window": timedelta(seconds=ingest["dedupe_window"])}
    config = load_config(
        None,
        {
            "storage": {"data_dir": tmp_path / "data", "fsync": "normal"},
            "ingest": {"max_group_cardinality": CAP, **ingest, **window},
        },
    )
    backend = open_backend(config, clock)
    try:
        ents = backend.entitlements
        yield Stores(
            kind,
            clock,
            backend.customers,
            SqliteKeys(backend.db),
            backend.meters,
            ents.features,
            ents,
            ents.grants,
            backend.notifications,
            backend.portal,
            backend.ledger,
            backend.usage,
        )
    finally:
        backend.close()


def memory_stores(clock: FixedClock, unknown_subjects: str = "accept", dedupe_window: int | None = None) -> Stores:
    meters = MemoryMeters(clock.now_us)
    customers = MemoryCustomers(clock.now_us)
    window_us = None if dedupe_window is None else dedupe_window * 1_000_000
    policy = UnknownSubjects(unknown_subjects)
    return Stores(
        "memory",
        clock,
        customers,
        MemoryKeys(),
        meters,
        MemoryFeatures(),
        MemoryEntitlements(),
        MemoryGrants(),
        MemoryNotifications(clock.now_us),
        MemoryPortal(),
        MemoryLedger(clock.now_us, meters, cap=CAP, customers=customers, default_policy=policy, window_us=window_us),
        MemoryUsage(meters.live, clock.now_us),
    )


def _clickhouse_stores(clock: FixedClock, stack: Stack) -> Iterator[Stores]:
    """The ClickHouse usage store in a database of its own, over the memory meters and ledger."""
    stores = memory_stores(clock)
    conn = Connection(stack.clickhouse, f"contract_{uuid.uuid4().hex}")
    try:
        stores.kind = "clickhouse"
        stores.usage = ClickHouseUsage(conn, stores.meters.live, clock.now_us)
        yield stores
    finally:
        conn.command(f"DROP DATABASE IF EXISTS `{conn.database}`")
        conn.close()


@pytest.fixture
def stores(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stores]:
    stack = request.getfixturevalue("scale_stack") if store_kind in SCALE else None
    yield from open_stores(store_kind, tmp_path, stack)


@pytest.fixture
def customers(stores: Stores) -> Any:
    """A CustomerRepository that is also the NamespaceSettings."""
    return stores.customers


@pytest.fixture
def keys(stores: Stores) -> Any:
    """A KeyStore."""
    return stores.keys


@pytest.fixture
def meters(stores: Stores) -> Any:
    """A MeterCatalog."""
    return stores.meters


@pytest.fixture
def features(stores: Stores) -> Any:
    """A FeatureRepository."""
    return stores.features


@pytest.fixture
def entitlements(stores: Stores) -> Any:
    """An EntitlementRepository."""
    return stores.entitlements


@pytest.fixture
def grants(stores: Stores) -> Any:
    """A GrantRepository."""
    return stores.grants


@pytest.fixture
def notifications(stores: Stores) -> Any:
    """The ChannelRepository, RuleRepository, EventLog and DeliveryStore of one store."""
    return stores.notifications


@pytest.fixture
def portal(stores: Stores) -> Any:
    """A PortalTokenStore."""
    return stores.portal


@pytest.fixture
def ledger(stores: Stores) -> Any:
    """A Ledger that validates events against ``stores.meters``."""
    return stores.ledger


@pytest.fixture
def usage(stores: Stores) -> Any:
    """A UsageStore following ``stores.meters``, fed from ``stores.ledger``."""
    return stores.usage
