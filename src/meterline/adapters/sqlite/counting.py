"""What the live counters and alert rules need from the embedded store
(``ports.counters``): the catalog they index, read from committed data, and the writer
thread, which applies the committed-usage stream."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from meterline.adapters.sqlite.customers import load_all
from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.entitlements import load_live
from meterline.adapters.sqlite.ingest import IngestState, live_meters
from meterline.adapters.sqlite.usage import write_firings
from meterline.domain.entitlements.model import Entitlement, Feature, FeatureInput
from meterline.ports.counters import CounterCatalog
from meterline.ports.stream import Firing, UsageListener

T = TypeVar("T")
_feature = msgspec.json.Decoder(FeatureInput)


class SqliteCounterSource:
    """Reads on a reader connection: called on the writer thread between its tasks (see
    ``SqliteStreamHost.serially``), it sees every committed change and nothing else."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def catalog(self) -> CounterCatalog:
        conn = self._db.reader()
        ents, grants = load_live(conn)
        return CounterCatalog(live_meters(conn), load_all(conn), ents, grants, _features(conn))

    def for_entitlement(self, entitlement: Entitlement) -> CounterCatalog:
        conn = self._db.reader()
        return CounterCatalog(
            live_meters(conn),
            load_all(conn, entitlement.customer_id),
            features=_features(conn, entitlement.feature_id),
        )


class SqliteStreamHost:
    """The writer thread: it applies every aggregated batch and calls the stream's listeners."""

    def __init__(self, db: Database, state: IngestState) -> None:
        self._db = db
        self._state = state

    def serially(self, task: Callable[[], T], *, bounded: bool = True) -> T:
        return self._db.writer.call(lambda conn: task(), bounded=bounded)

    def subscribe(self, listener: UsageListener) -> None:
        self._state.listeners.append(listener)

    def record(self, firings: Sequence[Firing]) -> int:
        return self._db.writer.call(lambda conn: write_firings(conn, firings))


def _features(conn: sqlite3.Connection, only: str | None = None) -> dict[str, Feature]:
    rows = conn.execute(
        "SELECT id, namespace, spec, created_us, archived_us FROM features WHERE ? IS NULL OR id = ?", (only, only)
    )
    return {i: Feature(i, ns, _feature.decode(spec), c, a) for i, ns, spec, c, a in rows}
