"""One parametrised fixture per port: every test in this directory runs against each adapter.

A new adapter joins by adding its name to ``ADAPTERS`` and a branch to :func:`open_stores`;
nothing else is edited.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meterline.adapters.memory.customers import MemoryCustomers
from meterline.adapters.memory.entitlements import MemoryEntitlements, MemoryFeatures, MemoryGrants
from meterline.adapters.memory.keys import MemoryKeys
from meterline.adapters.memory.ledger import MemoryLedger
from meterline.adapters.memory.meters import MemoryMeters
from meterline.adapters.memory.notifications import MemoryNotifications
from meterline.adapters.memory.portal import MemoryPortal
from meterline.adapters.memory.usage import MemoryUsage
from meterline.adapters.sqlite.keys import SqliteKeys
from meterline.bootstrap import open_backend
from meterline.config import load_config
from meterline.domain.clock import FixedClock

T0_US = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z
ADAPTERS = ["sqlite", "memory"]
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


def open_stores(kind: str, tmp_path: Path) -> Iterator[Stores]:
    clock = FixedClock(T0_US)
    if kind == "memory":
        meters = MemoryMeters(clock.now_us)
        yield Stores(
            kind,
            clock,
            MemoryCustomers(clock.now_us),
            MemoryKeys(),
            meters,
            MemoryFeatures(),
            MemoryEntitlements(),
            MemoryGrants(),
            MemoryNotifications(clock.now_us),
            MemoryPortal(),
            MemoryLedger(clock.now_us, meters, cap=CAP),
            MemoryUsage(meters.live, clock.now_us),
        )
        return
    config = load_config(
        None,
        {"storage": {"data_dir": tmp_path / "data", "fsync": "normal"}, "ingest": {"max_group_cardinality": CAP}},
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


@pytest.fixture(params=ADAPTERS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    yield from open_stores(request.param, tmp_path)


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
