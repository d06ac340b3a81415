"""The ClickHouse usage store after a crash half-way through a batch: the range recorded before
writing is applied again under the same tokens, so nothing is counted twice or missed, also
when the restarted aggregator uses another chunk size or a meter was created in between."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest
from contract.conftest import CAP, T0_US, memory_stores
from contract.test_usage import HISTORY, send, total
from contract.usage_kit import NS, spec
from stack.launch import Stack

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.usage import ClickHouseUsage
from meterline.domain.clock import FixedClock
from meterline.domain.errors import StorageUnavailable
from meterline.domain.meters.model import Aggregation
from meterline.services.aggregation import Aggregator


class CrashingConnection(Connection):
    """A real connection that dies (as a killed process would) at the insert into ``table``."""

    def __init__(self, url: str, database: str, table: str) -> None:
        super().__init__(url, database)
        self.table = table

    def insert(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]], token: str) -> None:
        if table == self.table and rows:
            raise StorageUnavailable("the process died here")
        super().insert(table, columns, rows, token)


@pytest.fixture
def database(scale_stack: Stack) -> Iterator[str]:
    name = f"crash_{uuid.uuid4().hex}"
    yield name
    conn = Connection(scale_stack.clickhouse, name)
    conn.command(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.mark.parametrize("dies_at", ["usage_dims", "usage_uniques"])
def test_a_batch_cut_short_is_completed_once_after_a_restart(scale_stack: Stack, database: str, dies_at: str) -> None:
    stores = memory_stores(FixedClock(T0_US))
    stores.meters.create(NS, spec(Aggregation.SUM))
    stores.meters.create(NS, spec(Aggregation.UNIQUE_COUNT))
    send(stores, HISTORY)
    crashing = CrashingConnection(scale_stack.clickhouse, database, dies_at)
    stores.usage = ClickHouseUsage(crashing, stores.meters.live, stores.clock.now_us)
    with pytest.raises(StorageUnavailable):
        Aggregator(stores.ledger, stores.usage, cap=CAP, chunk=40).drain()
    assert stores.usage.snapshot().pending_end == 40  # the intent outlived the crash
    stores.meters.create(NS, spec(Aggregation.COUNT))  # a meter created while the batch hung

    restarted = Connection(scale_stack.clickhouse, database)
    stores.usage = ClickHouseUsage(restarted, stores.meters.live, stores.clock.now_us)
    Aggregator(stores.ledger, stores.usage, cap=CAP, chunk=7).drain()  # another chunk size

    snap = stores.usage.snapshot()
    assert (snap.offset, snap.pending_end, snap.backfills) == (len(HISTORY), None, [])
    assert total(stores, "sum") == sum((e.value for e in HISTORY), Decimal(0))
    assert total(stores, "count") == len(HISTORY)
    users = {e.user for e in HISTORY}
    assert total(stores, "unique_count") == len(users)
    restarted.close()
    crashing.close()
