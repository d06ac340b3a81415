"""The billing stores of each adapter, with what a test needs to give them data: customers,
meters and events (the memory adapter reads events directly; SQLite through its ledger and
rollups). Used by the billing contract suite and the billing service tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from postgres_server import fresh_schema, server

from meterline.adapters.memory.billing_stores import memory_billing
from meterline.adapters.memory.billing_usage import MemoryPeriodUsage
from meterline.adapters.memory.customers import MemoryCustomers
from meterline.adapters.postgres.billing import billing_stores as pg_billing_stores
from meterline.adapters.postgres.catalog import PgCatalog
from meterline.bootstrap import open_backend
from meterline.config import load_config
from meterline.domain.clock import FixedClock
from meterline.domain.customers.model import Customer, CustomerInput
from meterline.domain.events.decode import Limits, decode_events
from meterline.domain.events.model import Event
from meterline.domain.meters.model import Meter, MeterSpec
from meterline.ports.billing import BillingStores
from meterline.services.aggregation import Aggregator

NS = "default"
MARCH = 1_772_323_200_000_000  # 2026-03-01T00:00:00Z
APRIL = 1_775_001_600_000_000  # 2026-04-01T00:00:00Z
MAY = 1_777_593_600_000_000  # 2026-05-01T00:00:00Z
_LIMITS = Limits(10_000, 10**15, None)


@dataclass
class Kit:
    """One adapter's billing stores and the means to feed them."""

    kind: str
    clock: FixedClock
    stores: BillingStores
    _customers: Any
    _backend: Any = None
    _memory: Any = None

    def customer(self, key: str, *subjects: str, namespace: str = NS) -> Customer:
        saved = self._customers.create(namespace, CustomerInput(key, key.title(), list(subjects) or None))
        customer: Customer = saved.customer
        return customer

    def delete_customer(self, key: str, namespace: str = NS) -> None:
        self._customers.delete(namespace, key)

    def meter(self, spec: MeterSpec, namespace: str = NS) -> Meter:
        if self._backend is not None:
            meter: Meter = self._backend.meters.create(namespace, spec)
            return meter
        meter = Meter(len(self._memory.directory.meters(namespace)) + 1, f"m-{spec.slug}", namespace, spec, 0)
        self._memory.directory.add_meter(meter)
        return meter

    def events(self, *events: dict[str, Any], namespace: str = NS) -> None:
        """Ingest CloudEvents (``id``, ``type``, ``subject``, ``time``, ``data``); every one must be accepted."""
        raws = [msgspec.Raw(msgspec.json.encode({"specversion": "1.0", "source": "test", **e})) for e in events]
        candidates = decode_events(raws, namespace, self.clock.now_us(), _LIMITS)
        assert all(c.event is not None for c in candidates), [c.rejection for c in candidates]
        if self._backend is not None:
            outcomes = self._backend.ledger.append(namespace, candidates).result()
            assert all(o.status == "accepted" for o in outcomes), outcomes
            Aggregator(self._backend.ledger, self._backend.usage, cap=1000).drain()  # usage is the aggregator's
            return
        accepted: list[Event] = [c.event for c in candidates if c.event is not None]
        self._memory.usage.add(accepted)


def open_kit(kind: str, tmp_path: Path, now_us: int = MARCH) -> Iterator[Kit]:
    clock = FixedClock(now_us)
    if kind == "memory":
        customers = MemoryCustomers(clock.now_us)
        memory = memory_billing(customers)
        yield Kit(kind, clock, memory.stores, customers, _memory=memory)
        return
    if kind == "postgres":  # the billing stores alone: usage is the usage store's (ClickHouse)
        with fresh_schema(server()) as dsn:
            pg = PgCatalog.open(dsn, clock.now_us, pool_size=2)
            try:
                stores = pg_billing_stores(pg.db, pg.customers, pg.meters, MemoryPeriodUsage(), clock.now_us)
                yield Kit(kind, clock, stores, pg.customers)
            finally:
                pg.close()
        return
    config = load_config(None, {"storage": {"data_dir": tmp_path / "data", "fsync": "normal"}})
    backend = open_backend(config, clock)
    try:
        yield Kit(kind, clock, backend.billing, backend.customers, _backend=backend)
    finally:
        backend.close()
