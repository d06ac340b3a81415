"""The embedded backend: one SQLite file behind the ledger, meters, dead letters and keys."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meterline.adapters.sqlite.billing import billing_stores
from meterline.adapters.sqlite.chain import ensure_format, ensure_ledger_id, migrate_step
from meterline.adapters.sqlite.corrections import SqliteCorrections
from meterline.adapters.sqlite.counting import SqliteCounterSource, SqliteStreamHost
from meterline.adapters.sqlite.customers import SqliteCustomers
from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.dead_letters import SqliteDeadLetters, SqliteResubmitter
from meterline.adapters.sqlite.dedupe_index import DedupeIndex, drop_key_table
from meterline.adapters.sqlite.dedupe_prune import DedupePruner
from meterline.adapters.sqlite.entitlements import SqliteEntitlements
from meterline.adapters.sqlite.erasure import SqliteErasures
from meterline.adapters.sqlite.erasure_chain import migrate as migrate_erasures
from meterline.adapters.sqlite.followups import FollowUps
from meterline.adapters.sqlite.ingest import IngestSettings, IngestState
from meterline.adapters.sqlite.ledger import SqliteLedger
from meterline.adapters.sqlite.meters import SqliteMeters
from meterline.adapters.sqlite.notifications import SqliteNotifications
from meterline.adapters.sqlite.portal import SqlitePortal
from meterline.adapters.sqlite.retention import RetentionPruner
from meterline.adapters.sqlite.usage import SqliteUsage
from meterline.domain.clock import Clock
from meterline.domain.customers.model import Customer
from meterline.domain.entitlements.model import Entitlement
from meterline.runtime.background import Monitor

DEDUPE_DIR = "dedupe-index"


@dataclass
class CatalogHooks:
    """What the catalog's writes tell whoever indexes the catalog (the live counters), after
    each COMMIT; set by the bootstrap."""

    changed: Callable[[], None] = lambda: None
    entitlement_added: Callable[[Entitlement], None] = lambda entitlement: None
    customer_added: Callable[[Customer], None] = lambda customer: None


class EmbeddedBackend:
    def __init__(
        self,
        data_dir: Path,
        settings: IngestSettings,
        clock: Clock,
        *,
        fsync: str = "full",
        max_batch: int = 512,
        max_weight: int = 100_000,
        max_queue: int = 4096,
        monitor: Monitor | None = None,
        dedupe: DedupeIndex | None = None,
        raw_events_us: int | None = None,
        prune_batch: int = 500,
    ) -> None:
        self.dedupe = dedupe or DedupeIndex(data_dir / DEDUPE_DIR)
        self.state = IngestState(settings, self.dedupe)
        self.db = Database(
            data_dir,
            fsync=fsync,
            max_batch=max_batch,
            max_weight=max_weight,
            max_queue=max_queue,
            monitor=monitor,
            on_rollback=self.state.rolled_back,
            before_commit=self._before_commit,
            after_commit=self._committed,
        )
        self.usage = SqliteUsage(self.db, self.state, clock.now_us)
        self.db.writer.call(ensure_ledger_id)
        self.db.writer.call(ensure_format)  # entries appended from here on: content format 2
        self.db.writer.call(lambda conn: migrate_erasures(conn, clock.now_us()))  # before any new erasure
        while self.db.writer.call(lambda conn: migrate_step(conn, clock.now_us())):
            pass  # a store from before the hash chain: its entries are linked first (adapters.sqlite.chain)
        self.db.writer.call(self._open_dedupe)
        self.state.head = self.state.committing_head = _head(self.db)
        self.ledger = SqliteLedger(self.db, self.state, clock.now_us)
        self.corrections = SqliteCorrections(self.db, self.state, clock.now_us)
        self.dedupe_pruner = DedupePruner(self.db, self.state, clock.now_us)  # started by the app
        self.retention = RetentionPruner(self.db, self.state, clock.now_us, raw_events_us, batch=prune_batch)
        self.meters = SqliteMeters(self.db, self.state, clock.now_us)
        self.dead_letters = SqliteDeadLetters(self.db)
        self.resubmitter = SqliteResubmitter(self.db, self.state, clock.now_us)
        self.customers = SqliteCustomers(self.db, self.state, clock.now_us)
        # Writes of the catalog update in-memory views after their COMMIT (``hooks``); a
        # failure there is never the caller's answer (the write is stored): the view goes
        # stale and is rebuilt (``followups``, started by the app).
        self.followups = FollowUps(monitor)
        self.hooks = hooks = CatalogHooks()
        self.entitlements = SqliteEntitlements(
            self.db, lambda: hooks.changed(), lambda entitlement: hooks.entitlement_added(entitlement)
        )
        self.customers.changed = lambda: hooks.changed()
        self.erasures = SqliteErasures(self.db, self.state, clock.now_us)
        self.erasures.changed = lambda: hooks.changed()
        self.customers.created = lambda customer: hooks.customer_added(customer)
        self.notifications = SqliteNotifications(self.db, clock.now_us)
        self.portal = SqlitePortal(self.db)
        self.stream = SqliteStreamHost(self.db, self.state)
        self.counter_source = SqliteCounterSource(self.db)
        self.billing = billing_stores(self.db, self.customers, self.meters, clock.now_us, self.corrections)

    def _open_dedupe(self, conn: sqlite3.Connection) -> None:
        self.dedupe.open(conn)  # indexes the ledger the sealed runs do not cover
        drop_key_table(conn)  # an upgraded data directory: the index now holds its keys

    def _before_commit(self, conn: sqlite3.Connection) -> None:
        self.usage.before_commit(conn)
        self.state.before_commit(conn)

    def _committed(self) -> None:
        self.state.committed()
        if not self.state.stale:  # then every seq below next_seq is committed
            self.dedupe.committed(self.state.next_seq - 1)

    def close(self) -> None:
        self.followups.close()
        self.retention.close()
        self.dedupe_pruner.close()
        self.meters.close()
        self.db.close()
        self.dedupe.close()


def _head(db: Database) -> int:
    row = db.reader().execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    return int(row[0])
