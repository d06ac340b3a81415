"""Config in, a running system out: the one place that chooses and wires adapters.

``build(config)`` opens the adapters the config names (today: the embedded SQLite store) and
builds the services and background loops on top of them. The HTTP app (``api.app``), the CLI
and future workers all start from here; none of them imports an adapter.

Scale-mode stores this side of the log (``storage.engine = "scale"``: the PostgreSQL catalog and
billing, the dedupe store of ``[dedupe]``) are opened by :func:`open_scale_stores`; their drivers
come with the ``scale`` extra and are imported only when the config asks for them
(``runtime.extras.import_extra`` names the extra when they are missing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.chain import SqliteChain, ensure_format, ensure_ledger_id, migrate_step
from meterline.adapters.sqlite.database import DB_FILE, Database
from meterline.adapters.sqlite.erasure_chain import migrate as migrate_erasures
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.adapters.sqlite.keys import SqliteKeys
from meterline.adapters.sqlite.ledger_reader import SqliteLedgerReader
from meterline.adapters.sqlite.meter_values import SqliteMeterValues
from meterline.adapters.sqlite.ranking import SqliteRanking
from meterline.adapters.sqlite.rebuild import rebuild
from meterline.adapters.sqlite.reconciliation import SqliteReconciliationCounts
from meterline.adapters.sqlite.retention import RetentionPruner
from meterline.adapters.sqlite.schema import connect, create_schema
from meterline.adapters.sqlite.status import SqliteStatus
from meterline.config import BillingConfig, Config
from meterline.domain.billing.records import RunSettings
from meterline.domain.clock import Clock, SystemClock
from meterline.domain.customers.model import UnknownSubjects
from meterline.domain.errors import ConfigError, Conflict, NotFound, StorageUnavailable
from meterline.domain.events.decode import Limits
from meterline.domain.integrity.rebuild import RebuildReport
from meterline.domain.meters.query import QueryLimits
from meterline.ports.billing import BillingStores
from meterline.ports.billing_usage import PeriodUsage
from meterline.ports.correction_log import CorrectionJournal
from meterline.ports.dedupe import DedupeStore
from meterline.ports.deliveries import DeliveryStore
from meterline.ports.identity import IdentityProvider
from meterline.ports.integrity import ChainSource, PartitionChainSource
from meterline.ports.ledger import Ledger, LedgerReader
from meterline.ports.live_usage import UsageCounters
from meterline.ports.meters import UsageRanking, UsageReader
from meterline.ports.reconciliation import ReconciliationCounts
from meterline.ports.sink import BatchFollower
from meterline.ports.status import StoreStatus
from meterline.runtime.background import Monitor, Ticker
from meterline.runtime.extras import import_extra
from meterline.services.aggregation import Aggregator
from meterline.services.alerts import AlertEvaluator, AnomalyScanner
from meterline.services.batch_alerts import BatchAlerts
from meterline.services.billing import Billing, SchedulerSettings, build_billing
from meterline.services.corrections import CorrectionService
from meterline.services.counter_feed import CounterFeed
from meterline.services.counters import History, LiveCounters
from meterline.services.customers import CustomerService
from meterline.services.dead_letters import DeadLetterService
from meterline.services.dispatch import Dispatcher
from meterline.services.entitlement_usage import CountedEntitlementUsage
from meterline.services.entitlement_values import EntitlementValueService
from meterline.services.entitlements import EntitlementService
from meterline.services.erasure import ErasureService
from meterline.services.features import FeatureService
from meterline.services.keys import KeyService
from meterline.services.meters import MeterService
from meterline.services.notifications import NotificationService
from meterline.services.portal import PortalService
from meterline.services.queried_usage import QueriedEntitlementUsage
from meterline.services.resubmit import Resubmission
from meterline.services.sink import SinkWorker
from meterline.services.usage_queries import UsageQueries

if TYPE_CHECKING:  # imported for real only when the config asks for it (the scale extra)
    from meterline.adapters.clickhouse.client import Connection
    from meterline.adapters.kafka.partitions import KafkaPartitions
    from meterline.adapters.postgres.catalog import PgCatalog
    from meterline.adapters.postgres.database import PgDatabase
    from meterline.adapters.postgres.dedupe import PgDedupe
    from meterline.adapters.postgres.meters import PgMeters


@dataclass(frozen=True)
class Catalog:
    """The catalog services the faces call."""

    customers: CustomerService
    keys: KeyService
    dead_letters: DeadLetterService
    corrections: CorrectionService
    resubmission: Resubmission
    erasures: ErasureService
    entitlements: EntitlementService
    features: FeatureService
    notifications: NotificationService
    portal: PortalService
    meters: MeterService
    values: EntitlementValueService
    usage: UsageQueries
    ranking: UsageRanking | None = None
    """Usage ranked per customer by the store (the embedded store's; None: ranked by the
    executive view's service from the meter query's rows)."""


@dataclass(frozen=True)
class Counting:
    """The live entitlement counters, their history reads and the alert rules fed by them."""

    counters: LiveCounters
    history: History
    alerts: AlertEvaluator


COUNTERS = "live counters"
ALERT_RULES = "alert rules"


def attach_counting(backend: EmbeddedBackend, clock: Clock, *, baseline_days: int = 7) -> Counting:
    """Live counters and alert rules over the backend: subscribed to its committed-usage
    stream (counters first), rebuilt after every catalog change (a failed rebuild marks them
    stale: ``followups``), and waiting at the aggregator's barriers."""
    host, followups, db = backend.stream, backend.followups, backend.db
    counters = LiveCounters(
        host, backend.counter_source, clock, fresh=lambda: db.fresh(), fresh_check=lambda: db.fresh_check()
    )
    host.subscribe(counters)
    rebuild = counters.reload
    backend.hooks.changed = followups.guarded(COUNTERS, counters.reload, rebuild)
    backend.meters.regrouped = followups.guarded(COUNTERS, counters.reload, rebuild)
    backend.hooks.entitlement_added = followups.guarded(COUNTERS, counters.added, rebuild)
    backend.hooks.customer_added = followups.guarded(
        COUNTERS, lambda c: counters.customer_added(c.namespace, c.key, c.subjects), rebuild
    )
    counters.stale = lambda: followups.is_stale(COUNTERS)
    counters.heal = lambda: followups.heal(COUNTERS)
    counters.reload()
    history = History(counters, backend.usage, clock, lambda: db.fresh())
    counters.rollups = history.usage
    notes = backend.notifications
    alerts = AlertEvaluator(host, counters, notes, notes, notes, history, clock, baseline_days=baseline_days)
    notes.changed = followups.guarded(ALERT_RULES, alerts.reload, alerts.reload)
    return Counting(counters, history, alerts)


def catalog(
    config: Config, clock: Clock, backend: EmbeddedBackend, counting: Counting, wake: Callable[[], None]
) -> Catalog:
    """The catalog services over the embedded store's repositories; ``wake`` tells the
    notification dispatcher that deliveries are due."""
    customers, ents, notes = backend.customers, backend.entitlements, backend.notifications
    allow_private = config.alerts.allow_private_webhook_targets
    entitlements = EntitlementService(ents, ents.features, customers, backend.meters, clock)
    people = CustomerService(
        customers, customers, customers, default_policy=UnknownSubjects(config.ingest.unknown_subjects)
    )
    return Catalog(
        customers=people,
        keys=KeyService(SqliteKeys(backend.db), clock),
        dead_letters=DeadLetterService(backend.dead_letters),
        resubmission=Resubmission(backend.resubmitter, clock, ingest_limits(config)),
        corrections=CorrectionService(
            backend.corrections,
            clock,
            future_skew_us=_us(config.ingest.future_skew.total_seconds()),
            policy=people.policy,
            owned=lambda namespace, subject: people.owner(namespace, subject) is not None,
        ),
        erasures=ErasureService(backend.erasures),
        entitlements=entitlements,
        features=FeatureService(ents.features, ents.grants, backend.meters, entitlements, clock),
        notifications=NotificationService(
            notes, notes, notes, ents.features, clock, allow_private_targets=allow_private, wake=wake
        ),
        portal=PortalService(
            backend.portal, clock, default_ttl=config.portal.token_ttl, max_ttl=config.portal.max_token_ttl
        ),
        meters=MeterService(backend.meters, SqliteMeterValues(backend.db), ents.features, clock),
        usage=UsageQueries(backend.meters, backend.meters),
        ranking=SqliteRanking(backend.db, clock.now_us),
        values=EntitlementValueService(
            entitlements,
            CountedEntitlementUsage(counting.counters, counting.history),
            clock,
            QueryLimits(config.query.max_windows, config.query.max_rows),
        ),
    )


@contextmanager
def open_keys(config: Config, *, create: bool = True) -> Iterator[KeyService]:
    """The key service over the configured catalog alone (the CLI's ``keys`` commands; safe
    while servers run on the same store): the data directory, or the shared PostgreSQL catalog.
    Without ``create`` a data directory without a store is ``no_store`` (listing or revoking
    keys never makes one; creating a key before the first start may)."""
    if config.storage.engine == "scale":
        pg = open_postgres(config, SystemClock())
        try:
            yield KeyService(pg.keys, SystemClock())
        finally:
            pg.close()
        return
    if not create:
        _existing_store(config)
    db = Database(config.storage.data_dir, fsync=config.storage.fsync)
    try:
        yield KeyService(SqliteKeys(db), SystemClock())
    finally:
        db.close()


def _scale_adapter(module: str, *drivers: str) -> ModuleType:
    """A scale-mode adapter module, once its drivers import (else a ConfigError naming the one
    missing and the extra that brings it)."""
    for driver in drivers:
        import_extra(driver, "scale")
    return import_extra(module, "scale")


def open_postgres(config: Config, clock: Clock) -> PgCatalog:
    """The PostgreSQL catalog (``adapters.postgres.catalog.PgCatalog``): connected, migrated."""
    module = _scale_adapter("meterline.adapters.postgres.catalog", "psycopg", "psycopg_pool")
    pg = config.postgres
    try:
        catalog: PgCatalog = module.PgCatalog.open(
            pg.dsn, clock.now_us, pool_size=pg.pool_size, timeout=pg.connect_timeout
        )
        return catalog
    except StorageUnavailable as exc:
        raise ConfigError(f"the PostgreSQL database of [postgres] dsn cannot be reached: {exc.detail}") from None


@dataclass
class ScaleStores:
    """The scale-mode stores this side of the log: the shared catalog and billing stores in
    PostgreSQL and the dedupe store API nodes claim keys in."""

    catalog: PgCatalog
    """Customers, keys, meters, features, entitlements, grants, notifications, portal."""
    dedupe: DedupeStore
    pruner: Ticker
    """Forgets dedupe keys that left the window; ``start`` runs it (in any number of processes)."""
    _close: list[Callable[[], None]] = field(default_factory=list)

    def billing(self, usage: PeriodUsage, clock: Clock) -> BillingStores:
        """The billing stores over the catalog's database, pricing ``usage`` (the usage store's)."""
        module = _scale_adapter("meterline.adapters.postgres.billing", "psycopg", "psycopg_pool")
        stores: BillingStores = module.billing_stores(
            self.catalog.db, self.catalog.customers, self.catalog.meters, usage, clock.now_us
        )
        return stores

    def start(self) -> None:
        self.pruner.start()

    def close(self) -> None:
        self.pruner.close()
        for close in reversed(self._close):
            close()


def open_scale_stores(
    config: Config, clock: Clock, monitor: Monitor | None = None, *, prune_every: float = 60.0
) -> ScaleStores:
    """Open what ``[postgres]``, ``[dedupe]`` and ``[redis]`` name (``storage.engine = "scale"``).
    The dedupe window is ``ingest.dedupe_window`` (None: forever); the pruner, once started,
    runs every ``prune_every`` seconds."""
    if config.storage.engine != "scale":
        raise ConfigError('the scale-mode stores are opened for storage.engine = "scale" only')
    pg = open_postgres(config, clock)
    closers: list[Callable[[], None]] = [pg.close]
    try:
        dedupe = dedupe_store(config, pg.db, clock, closers)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    pruner = Ticker("dedupe-prune", dedupe.prune, lambda: prune_every, monitor)
    return ScaleStores(pg, dedupe, pruner, closers)


@contextmanager
def open_chain(config: Config, clock: Clock | None = None) -> Iterator[ChainSource]:
    """The ledger's hash chain as one snapshot (``verify``; safe while a server runs on the same
    directory). A store that never had the chain gains it first, as a server's first open would."""
    _embedded_only(config)
    path = _existing_store(config)
    now_us = (clock or SystemClock()).now_us
    conn = connect(path, fsync=config.storage.fsync)
    try:
        create_schema(conn)
        more = True
        while more:
            conn.execute("BEGIN IMMEDIATE")
            ensure_ledger_id(conn)
            ensure_format(conn)
            migrate_erasures(conn, now_us())
            more = migrate_step(conn, now_us())
            conn.execute("COMMIT")
    finally:
        conn.close()
    source = SqliteChain(path)
    try:
        yield source
    finally:
        source.close()


def dedupe_store(config: Config, db: PgDatabase, clock: Clock, closers: list[Callable[[], None]]) -> DedupeStore:
    """The shared ack-time dedupe store ``[dedupe] backend`` names (PostgreSQL over ``db``, or
    Redis), with the lease of ``[dedupe]`` and the window of ``ingest.dedupe_window``; what
    it opens is closed by ``closers``. API nodes and workers must use the same one."""
    window = config.ingest.dedupe_window
    window_us = None if window is None else _us(window.total_seconds())
    lease_us = _us(config.dedupe.lease.total_seconds())
    erasure_mod = _scale_adapter("meterline.adapters.postgres.erasure", "psycopg", "psycopg_pool")
    secret = erasure_mod.PgErasureCatalog(db, clock.now_us).secret  # names every key (and keeps erased ones)
    if config.dedupe.backend == "redis":
        dedupe_mod = _scale_adapter("meterline.adapters.redis.dedupe", "redis")
        client = import_extra("redis", "scale").Redis.from_url(config.redis.url)
        closers.append(client.close)
        redis_store = dedupe_mod.RedisDedupe(
            client, clock.now_us, lease_us=lease_us, window_us=window_us, prefix=config.redis.key_prefix, secret=secret
        )
        redis_store.check_format()  # a store of an older version's plaintext keys is converted first
        return redis_store  # type: ignore[no-any-return]
    dedupe_mod = _scale_adapter("meterline.adapters.postgres.dedupe", "psycopg", "psycopg_pool")
    pg_store: DedupeStore = dedupe_mod.PgDedupe(db, clock.now_us, lease_us=lease_us, window_us=window_us, secret=secret)
    return pg_store


def upgrade_dedupe(config: Config, clock: Clock) -> str:
    """Convert the shared dedupe store of an older version to keyed names (``meterline
    upgrade-dedupe``): PostgreSQL's is converted by its migration (17) as the catalog opens;
    Redis's by ``adapters.redis.dedupe_upgrade``, with every node of the older version stopped.
    What was done, in a line."""
    if config.storage.engine != "scale":
        raise ConfigError('the shared dedupe store is used with storage.engine = "scale" only')
    pg = open_postgres(config, clock)
    try:
        if config.dedupe.backend != "redis":
            return "PostgreSQL dedupe store: keyed (migration 18 is applied when a node opens the catalog)"
        upgrade_mod = _scale_adapter("meterline.adapters.redis.dedupe_upgrade", "redis")
        erasure_mod = _scale_adapter("meterline.adapters.postgres.erasure", "psycopg", "psycopg_pool")
        client = import_extra("redis", "scale").Redis.from_url(config.redis.url)
        try:
            secret = erasure_mod.PgErasureCatalog(pg.db, clock.now_us).secret()
            moved = upgrade_mod.upgrade(client, config.redis.key_prefix, secret)
            files_mod = _scale_adapter("meterline.adapters.redis.persistence", "redis")
            # the AOF and the snapshot still hold the plaintext names: rewritten from the data now
            wait = config.erasure.redis_rewrite_wait
            files = files_mod.RedisFiles(client).rewrite_files(wait) if moved else {}
        finally:
            client.close()
        done = ", ".join(f"{kind} {outcome}" for kind, outcome in files.items())
        return f"Redis dedupe store: {moved} plaintext keys converted to keyed names" + (
            f"; Redis's files: {done}" if done else ""
        )
    finally:
        pg.close()


def usage_counters(config: Config, closers: list[Callable[[], None]]) -> UsageCounters | None:
    """The live usage counters in ``[redis]`` (``ports.live_usage``; None unless ``[redis]
    counters`` is on), under the key prefix and the topic; what it opens is closed by
    ``closers``. API nodes and workers of one deployment must agree."""
    if not config.redis.counters:
        return None
    module = _scale_adapter("meterline.adapters.redis.live_usage", "redis")
    client = import_extra("redis", "scale").Redis.from_url(
        config.redis.url, socket_timeout=config.redis.timeout, socket_connect_timeout=config.redis.timeout
    )
    closers.append(client.close)
    counters: UsageCounters = module.RedisUsageCounters(client, f"{config.redis.key_prefix}{config.kafka.topic}:")
    return counters


@contextmanager
def open_partition_chain(config: Config, clock: Clock | None = None) -> Iterator[PartitionChainSource]:
    """Scale mode's hash chains (one per log partition) as ClickHouse holds them, for ``verify``
    (safe while workers run: nothing past each partition's applied position is read)."""
    for driver in ("clickhouse_connect",):
        import_extra(driver, "scale")
    from meterline.adapters.clickhouse.chain import ClickHouseChain
    from meterline.adapters.clickhouse.client import Connection
    from meterline.adapters.clickhouse.schema import statements

    ch = config.clickhouse
    retention = raw_events_us(config)
    seconds = None if retention is None else retention // 1_000_000
    conn = Connection(ch.url, ch.database, user=ch.user, password=ch.password)
    try:
        for sql in statements(ch.dedupe_window, seconds):  # tables missing before the chain existed
            conn.command(sql)
    except BaseException:
        conn.close()
        raise
    source = ClickHouseChain(conn, seconds, (clock or SystemClock()).now_us())
    try:
        yield source
    finally:
        source.close()


@contextmanager
def open_correction_journal(config: Config) -> Iterator[CorrectionJournal]:
    """Scale mode's journal of corrections in PostgreSQL, for ``verify``'s check of it against
    the log's chained entries (``services.journal_audit``)."""
    for driver in ("psycopg", "psycopg_pool"):
        import_extra(driver, "scale")
    from meterline.adapters.postgres.corrections import PgCorrectionJournal
    from meterline.adapters.postgres.database import PgDatabase

    pg = PgDatabase(config.postgres.dsn, max_size=2)
    try:
        yield PgCorrectionJournal(pg)
    finally:
        pg.close()


def rebuild_store(config: Config, *, check: bool) -> RebuildReport:
    """Recompute the rollups from the ledger in one write transaction of its own (the CLI's
    ``rebuild``; safe while a server runs on the same directory) and compare them with those
    stored; unless ``check``, the rebuilt rows replace them. In scale mode from ClickHouse's
    raw events, the sink workers held off meanwhile (:func:`rebuild_scale`)."""
    if config.storage.engine == "scale":
        return rebuild_scale(config, check=check)
    conn = connect(_existing_store(config), fsync=config.storage.fsync)
    try:
        create_schema(conn)
        conn.execute("BEGIN IMMEDIATE")
        report = rebuild(conn, cap=config.ingest.max_group_cardinality, replace=not check)
        conn.execute("COMMIT")
        return report
    finally:
        conn.close()


Gauge = tuple[str, str, Callable[[], float]]
"""A Prometheus gauge a node exports: name, help text, and how to read it."""


class Node(Protocol):
    """What the HTTP face runs on, whichever storage mode built it (:class:`System` for the
    embedded store, ``bootstrap_scale.ScaleNode`` for scale mode)."""

    config: Config
    clock: Clock
    monitor: Monitor
    status: StoreStatus
    catalog: Catalog
    billing: Billing
    dispatcher: Dispatcher
    counts: ReconciliationCounts | None

    @property
    def ledger(self) -> Ledger: ...

    def gauges(self) -> list[Gauge]:
        """The storage gauges this node exports on ``/metrics``."""
        ...

    def lag_seconds(self) -> float:
        """How long usage has been behind the ledger without catching up (0 when caught up)."""
        ...

    def start(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class System:
    """Everything one process runs: the store, its services and their background loops."""

    config: Config
    clock: Clock
    monitor: Monitor
    backend: EmbeddedBackend
    status: StoreStatus
    counting: Counting
    aggregator: Aggregator
    dispatcher: Dispatcher
    scanner: AnomalyScanner
    catalog: Catalog
    billing: Billing
    counts: ReconciliationCounts | None = None
    """What reconciliation counts in the store (the dashboard's reconciliation view)."""
    _started: list[object] = field(default_factory=list)

    @property
    def ledger(self) -> Ledger:
        return self.backend.ledger

    def lag_seconds(self) -> float:
        return self.aggregator.lag_seconds()

    def retention_blocked(self) -> str | None:
        """Why retention stopped at an entry that does not match the chain (None: it did not)."""
        return self.backend.retention.blocked

    def raw_events_from(self) -> int:
        """Hours before this (µs) may lack raw events, removed by retention (0: none were)."""
        return self.backend.retention.status().hours_before_us

    def gauges(self) -> list[Gauge]:
        store, agg = self.status, self.aggregator
        return [
            ("meterline_ledger_events", "Events in the ledger", store.ledger_events),
            ("meterline_rollup_lag_events", "Ledger events not yet applied to a meter", store.pending_backfill),
            ("meterline_aggregation_lag_events", "Committed ledger events the aggregator has not applied", agg.lag),
            (
                "meterline_aggregation_lag_seconds",
                "How long the aggregator has been behind the ledger head without catching up (0 when caught up)",
                agg.lag_seconds,
            ),
            ("meterline_aggregated_events_total", "Ledger events the aggregator applied", lambda: agg.stats.events),
            ("meterline_group_commits", "Write transactions committed", store.commits),
            (
                "meterline_storage_available",
                "1 while commits succeed; 0 from a failed commit until one succeeds again (METER-001)",
                lambda: int(store.writable()[0]),
            ),
            ("meterline_write_queue", "Write tasks waiting for the writer thread", store.queued),
            (
                "meterline_followup_failures_total",
                "In-memory follow-ups of committed writes (counters index, alert rules) that failed;"
                " the view was rebuilt",
                store.followup_failures,
            ),
            *retention_gauges(self.backend.retention),
        ]

    def start(self) -> None:
        """Start the background loops (webhook delivery, anomaly scans, key pruning, follow-ups,
        the billing scheduler when the config enables it)."""
        self.dispatcher.start()
        self.scanner.start()
        self.backend.dedupe_pruner.start()
        self.backend.retention.start()
        self.backend.followups.start()
        self.billing.scheduler.start()

    def close(self) -> None:
        """Stop the loops, then close the store (its writer commits what was queued)."""
        self.billing.scheduler.close()
        self.scanner.close()
        self.dispatcher.close()
        self.aggregator.close()
        self.backend.close()


def retention_gauges(pruner: RetentionPruner) -> list[Gauge]:
    """``retention.raw_events`` at work (docs/retention.md)."""
    return [
        (
            "meterline_retention_pruned_events",
            "Raw ledger events removed by retention (their hashes stay in the chain)",
            lambda: pruner.status().pruned,
        ),
        (
            "meterline_retention_raw_events_seconds",
            "How long raw events are kept (retention.raw_events; 0: forever)",
            lambda: (pruner.raw_events_us or 0) / 1e6,
        ),
        (
            "meterline_retention_pruned_before_seconds",
            "Hours before this time (Unix seconds) may lack raw events; their rollups are authoritative",
            lambda: pruner.status().hours_before_us / 1e6,
        ),
        (
            "meterline_retention_blocked",
            "1 while removal is stopped at a ledger entry that does not match the hash chain",
            lambda: int(pruner.blocked is not None),
        ),
    ]


def open_backend(
    config: Config, clock: Clock, monitor: Monitor | None = None, *, aggregate: bool = True
) -> EmbeddedBackend:
    """Open the embedded store alone (CLI commands that work on a data directory). With
    ``aggregate``, the ledger is aggregated up to its head first (as the server's aggregator
    would), so usage read from it is complete."""
    _embedded_only(config)
    ingest_cfg = config.ingest
    settings = IngestSettings(
        dedupe_window_us=None if ingest_cfg.dedupe_window is None else _us(ingest_cfg.dedupe_window.total_seconds()),
        max_group_cardinality=ingest_cfg.max_group_cardinality,
        unknown_subjects=UnknownSubjects(ingest_cfg.unknown_subjects),
    )
    backend = EmbeddedBackend(
        config.storage.data_dir,
        settings,
        clock,
        fsync=config.storage.fsync,
        max_batch=config.storage.group_commit_max_requests,
        max_weight=config.storage.group_commit_max_events,
        max_queue=config.storage.max_queued_writes,
        monitor=monitor,
        raw_events_us=raw_events_us(config),
        prune_batch=config.retention.prune_batch,
    )
    try:
        backend.meters.set_builtins(config.metering.ingested_bytes)
    except BaseException:
        backend.close()
        raise
    if aggregate:
        try:
            cap, chunk = config.ingest.max_group_cardinality, config.aggregation.chunk
            Aggregator(backend.ledger, backend.usage, cap=cap, chunk=chunk).drain()  # not wired: reads never wait
        except BaseException:
            backend.close()
            raise
    return backend


@contextmanager
def open_migration(source: Config, target: Config) -> Iterator[tuple[LedgerReader, Ledger]]:
    """The source's ledger, read-only (an embedded data directory; a server may keep running
    on it), and the target's ledger to append to (``meterline migrate``). An embedded target
    must have no server running on it: two processes appending to one store would each miss
    the other's keys. A scale target may be live: its dedupe store is shared by every writer.
    The target's configured meters exist before the first event goes in."""
    if source.storage.engine != "embedded":
        raise ConfigError(
            'meterline migrate reads an embedded ledger: the source config must use storage.engine = "embedded"'
        )
    if target.storage.engine == "scale":
        reader = SqliteLedgerReader(source.storage.data_dir)
        try:
            with open_scale_ledger(target) as ledger:
                yield reader, ledger
        finally:
            reader.close()
        return
    if source.storage.data_dir.resolve() == target.storage.data_dir.resolve():
        raise ConfigError("the source and the target are the same data directory")
    reader = SqliteLedgerReader(source.storage.data_dir)
    try:
        backend = open_backend(target, SystemClock())
        try:
            if not backend.dedupe.sole_writer:
                raise ConfigError(
                    f"a meterline server is running on the target {target.storage.data_dir}: stop it first"
                    " (the migration appends to the target's ledger directly)"
                )
            ensure_config_meters(target, backend)  # as its server would at start, before any event
            yield reader, backend.ledger
            Aggregator(backend.ledger, backend.usage, cap=target.ingest.max_group_cardinality).drain()
        finally:
            backend.close()
    finally:
        reader.close()


def aggregator(config: Config, backend: EmbeddedBackend, monitor: Monitor | None = None) -> Aggregator:
    """The aggregator the config describes over the backend (not started)."""
    return attach_aggregator(
        backend,
        cap=config.ingest.max_group_cardinality,
        chunk=config.aggregation.chunk,
        max_wait=config.aggregation.max_wait,
        check_staleness=config.aggregation.check_staleness,
        gather=config.aggregation.gather,
        monitor=monitor,
    )


def attach_aggregator(
    backend: EmbeddedBackend,
    *,
    cap: int,
    chunk: int = 20_000,
    max_wait: float = 5.0,
    check_staleness: float = 0.0,
    gather: float = 0.05,
    monitor: Monitor | None = None,
) -> Aggregator:
    """An aggregator over the backend's ledger and usage store, wired to its hooks: woken by
    every ingest commit and meter change, and the barrier of every usage read (not started)."""
    agg = Aggregator(backend.ledger, backend.usage, cap=cap, chunk=chunk, monitor=monitor, gather=gather)
    backend.state.on_head.append(agg.wake)
    backend.meters.changed = agg.meters_changed
    backend.db.fresh = agg.fresh(max_wait)
    backend.db.fresh_check = agg.fresh(max_wait, check_staleness)
    backend.db.settled = agg.settled(max_wait)
    return agg


def build(config: Config, clock: Clock | None = None) -> System:
    """Open the store and wire the services; call ``start()`` to run the background loops."""
    clock = clock or SystemClock()
    monitor = Monitor(stuck_after=config.health.stuck_after.total_seconds())
    backend = open_backend(config, clock, monitor, aggregate=False)
    try:
        if not config.metering.ingested_bytes:
            backend.meters.drop_builtins()  # turned off: the server drops them (docs/meters.md)
        counting = attach_counting(backend, clock, baseline_days=config.alerts.baseline_days)
    except BaseException:
        backend.close()
        raise
    agg = aggregator(config, backend, monitor)
    agg.start()  # as the writer: running from here on, so reads can wait for it
    try:
        ensure_config_meters(config, backend)
    except BaseException:
        agg.close()
        backend.close()
        raise
    dispatcher = webhook_dispatcher(config, backend.notifications, clock, monitor)
    counting.alerts.wake = dispatcher.wake
    scanner = AnomalyScanner(counting.alerts, clock, monitor=monitor)
    billing = billing_services(config, backend, clock, monitor)
    services = catalog(config, clock, backend, counting, dispatcher.wake)
    counts = SqliteReconciliationCounts(backend.db)
    status = SqliteStatus(backend)
    return System(
        config, clock, monitor, backend, status, counting, agg, dispatcher, scanner, services, billing, counts
    )


def webhook_dispatcher(config: Config, store: DeliveryStore, clock: Clock, monitor: Monitor) -> Dispatcher:
    """The alert-delivery loop of ``[alerts]`` over a delivery store (not started)."""
    alerts = config.alerts
    return Dispatcher(
        store,
        clock,
        timeout=alerts.webhook_timeout,
        max_attempts=alerts.max_attempts,
        backoff_initial=alerts.backoff_initial,
        backoff_max=alerts.backoff_max,
        allow_private_targets=alerts.allow_private_webhook_targets,
        monitor=monitor,
    )


def run_settings(config: BillingConfig) -> RunSettings:
    """The billing-run settings of a ``[billing]`` config section."""
    return RunSettings(
        prefix=config.invoice_prefix,
        digits=config.invoice_digits,
        grace_us=_us(config.grace_period.total_seconds()),
        lookback_us=_us(config.adjustment_lookback.total_seconds()),
    )


def billing_services(config: Config, backend: EmbeddedBackend, clock: Clock, monitor: Monitor | None = None) -> Billing:
    """The billing services over the store's billing adapters (the scheduler is not started)."""
    cfg = config.billing
    scheduler = SchedulerSettings(cfg.scheduler_enabled, cfg.scheduler_interval.total_seconds())
    return build_billing(
        backend.billing,
        clock,
        run_settings(cfg),
        scheduler=scheduler,
        max_report_windows=config.query.max_rows,
        monitor=monitor,
    )


@contextmanager
def open_billing(config: Config, clock: Clock | None = None) -> Iterator[Billing]:
    """The billing services over the data directory alone (``meterline billing run``); the
    store is closed on exit."""
    clock = clock or SystemClock()
    backend = open_backend(config, clock)
    try:
        yield billing_services(config, backend, clock)
    finally:
        backend.close()


def ensure_config_meters(config: Config, backend: EmbeddedBackend) -> None:
    """Create the config file's meters that do not exist yet; an existing one must match."""
    for m in config.meters:
        spec = m.spec()
        try:
            existing = backend.meters.get(m.namespace, spec.slug)
        except NotFound:
            backend.meters.create(m.namespace, spec)
            continue
        if existing.spec != spec:
            raise ConfigError(
                f"meter {spec.slug!r} in namespace {m.namespace!r} exists with a different definition;"
                " delete it first (its rollups are rebuilt from the ledger when it is created again)"
            )


@dataclass
class Worker:
    """A sink worker of scale mode and what it holds open."""

    sink: SinkWorker
    partitions: KafkaPartitions
    conn: Connection
    pg: PgDatabase
    _close: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        self.partitions.close()
        self.conn.close()
        for close in reversed(self._close):
            close()
        self.pg.close()


def scale_dedupe(config: Config, db: PgDatabase, clock: Clock) -> PgDedupe:
    """The shared ack-time dedupe store of scale mode (PostgreSQL), with the lease of
    ``[dedupe]`` and the window of ``ingest.dedupe_window``."""
    from meterline.adapters.postgres.dedupe import PgDedupe
    from meterline.adapters.postgres.erasure import PgErasureCatalog

    window = config.ingest.dedupe_window
    return PgDedupe(
        db,
        clock.now_us,
        lease_us=_us(config.dedupe.lease.total_seconds()),
        window_us=None if window is None else _us(window.total_seconds()),
        secret=PgErasureCatalog(db, clock.now_us).secret,
    )


def ensure_scale_meters(config: Config, meters: PgMeters) -> None:
    """Create the config file's meters missing from the shared catalog (another node may be
    creating them at the same time), and the built-in meters on or off as ``[metering]`` says."""
    meters.set_builtins(config.metering.ingested_bytes)
    for m in config.meters:
        try:
            meters.create(m.namespace, m.spec())
        except Conflict:
            pass


def open_worker(config: Config) -> Worker:
    """A sink worker over the config's Kafka topic, ClickHouse database and PostgreSQL catalog
    and dedupe store (``meterline worker``)."""
    if config.storage.engine != "scale":
        raise ConfigError('meterline worker runs in scale mode: set storage.engine = "scale" (docs/scale.md)')
    for driver in ("psycopg", "psycopg_pool", "confluent_kafka", "clickhouse_connect"):
        import_extra(driver, "scale")  # a ConfigError naming the extra, before anything opens
    from meterline.adapters.clickhouse.client import Connection
    from meterline.adapters.clickhouse.sink import ClickHouseSink
    from meterline.adapters.clickhouse.usage import ClickHouseUsage
    from meterline.adapters.kafka.partitions import KafkaPartitions
    from meterline.adapters.postgres.database import PgDatabase
    from meterline.adapters.postgres.fence import PgFence
    from meterline.adapters.postgres.meters import PgMeters

    clock = SystemClock()
    ch, k = config.clickhouse, config.kafka
    retention = raw_events_us(config)
    retention = None if retention is None else retention // 1_000_000
    pg = PgDatabase(config.postgres.dsn)
    meters = PgMeters(pg, clock.now_us)
    conn = Connection(ch.url, ch.database, user=ch.user, password=ch.password)
    try:
        ensure_scale_meters(config, meters)
        fence = PgFence(pg, config.postgres.dsn)
        store = ClickHouseSink(
            conn,
            meters.live,
            fence,
            dedupe_window=ch.dedupe_window,
            raw_retention_seconds=retention,
            now_us=clock.now_us,
        )
        partitions = KafkaPartitions(
            k.bootstrap_servers,
            k.topic,
            k.consumer_group,
            lambda streams: {s: p.done for s, p in store.positions(streams).items()},
            partitions=k.partitions,
            replication=k.replication_factor,
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=k.heartbeat_interval_ms,
        )
    except BaseException:
        conn.close()
        pg.close()
        raise
    closers: list[Callable[[], None]] = []
    dedupe = dedupe_store(config, pg, clock, closers)  # the one the API nodes claim keys in
    cap, chunk = config.ingest.max_group_cardinality, config.aggregation.chunk
    from meterline.adapters.postgres.quarantine import PgQuarantine

    copies = PgQuarantine(pg, clock.now_us)  # released copies of quarantined events count once
    usage = ClickHouseUsage(conn, meters.live, clock.now_us)
    alerts = scale_alerts(pg, meters, usage, clock, config.alerts.baseline_days)
    followers: list[BatchFollower] = [alerts]
    scanner = AnomalyScanner(alerts, clock, delay=config.alerts.anomaly_delay)  # spike/drop rules, hourly
    scanner.start()
    closers.append(scanner.close)
    counters = usage_counters(config, closers)
    if counters is not None:
        followers.append(CounterFeed(counters, meters.live, store.known, cap=cap))
    from meterline.adapters.postgres.erasure import PgErasedEntries

    sink = SinkWorker(
        partitions,
        store,
        meters.live,
        dedupe,
        fence,
        cap=cap,
        max_entries=chunk,
        copies=copies,
        followers=followers,
        erased=PgErasedEntries(pg),  # erased entries read again from the log stay erased
    )
    return Worker(sink, partitions, conn, pg, closers)


def scale_alerts(pg: PgDatabase, meters: PgMeters, usage: UsageReader, clock: Clock, baseline_days: int) -> BatchAlerts:
    """The alert rules a sink worker evaluates after each applied batch (``services.batch_alerts``),
    over the shared catalog and the ClickHouse usage the batch went into."""
    from meterline.adapters.postgres.customers import PgCustomers
    from meterline.adapters.postgres.entitlements import PgEntitlements, PgFeatures, PgGrants
    from meterline.adapters.postgres.notifications import PgNotifications
    from meterline.adapters.postgres.progress import PgProgress

    customers, entitlements = PgCustomers(pg, clock.now_us), PgEntitlements(pg)
    counting = QueriedEntitlementUsage(customers, entitlements, PgFeatures(pg), PgGrants(pg), meters, usage, clock)
    notifications = PgNotifications(pg, clock.now_us)
    return BatchAlerts(
        customers,
        entitlements,
        counting,
        usage,
        notifications,
        notifications,
        notifications,
        PgProgress(pg),
        clock,
        baseline_days=baseline_days,
    )


REBUILD_ATTEMPTS = 3
SETTLE_HELD = 5.0
"""How long a rebuild, holding the workers off, waits for the batches in flight to finish."""
SETTLE_RELEASED = 30.0
"""How long it waits, having released them, for the workers to finish ranges refused writes left."""


def rebuild_scale(
    config: Config, *, check: bool, settle: tuple[float, float] = (SETTLE_HELD, SETTLE_RELEASED)
) -> RebuildReport:
    """``meterline rebuild`` in scale mode (``adapters.clickhouse.rebuild``): hold every sink
    worker off (the fence's maintenance lock: their next write is refused and none takes a
    partition until it is released; API nodes go on accepting events), wait for batches in
    flight to finish, rebuild from the raw events and compare or swap, release. A range a
    fenced write recorded and left is finished by the workers once released, then the rebuild
    tries again; a range that stays unfinished (a worker dead or stopped mid-batch) refuses it.
    ``settle``: how long to wait for unfinished ranges, workers held off and released."""
    for driver in ("psycopg", "psycopg_pool", "clickhouse_connect"):
        import_extra(driver, "scale")
    import uuid

    from meterline.adapters.clickhouse.client import Connection
    from meterline.adapters.clickhouse.rebuild import rebuild, settled
    from meterline.adapters.clickhouse.schema import create
    from meterline.adapters.postgres.database import PgDatabase
    from meterline.adapters.postgres.fence import PgFence
    from meterline.adapters.postgres.meters import PgMeters

    ch = config.clickhouse
    retention = raw_events_us(config)
    if not check and retention is not None:
        raise Conflict(
            "retention.raw_events is set: the raw events past it are gone, and a rebuild would erase the usage"
            " only the rollups still hold; run rebuild --check to compare"
        )
    pg = PgDatabase(config.postgres.dsn)
    try:
        conn = Connection(ch.url, ch.database, user=ch.user, password=ch.password)
        try:
            create(conn, ch.dedupe_window, None if retention is None else retention // 1_000_000)
            meters, fence = PgMeters(pg, SystemClock().now_us), PgFence(pg, config.postgres.dsn)
            if fence.erasing():  # its copies and the originals stand side by side until it ends
                raise Conflict(
                    "an erasure of a subject is unfinished (a process died in it): any API node finishes it within"
                    " seconds; run rebuild again when it is done"
                )
            left: list[str] = []
            for _ in range(REBUILD_ATTEMPTS):
                with fence.maintenance(wait=False) as held:
                    if not held:
                        raise Conflict("another meterline rebuild holds the sink workers; try again when it ends")
                    left = settled(conn, settle[0])
                    if not left:
                        cap = config.ingest.max_group_cardinality
                        run = uuid.uuid4().hex[:12]
                        return rebuild(
                            conn, meters.live(), cap=cap, replace=not check, window=ch.dedupe_window, run=run
                        )
                settled(conn, settle[1])  # released: the workers finish what fenced writes left
            raise Conflict(
                f"ranges stay unfinished ({', '.join(left)}): a sink worker died or is stopped in the middle of"
                " a batch; start or resume the workers so they finish it, then run rebuild again"
            )
        finally:
            conn.close()
    finally:
        pg.close()


@contextmanager
def open_scale_ledger(config: Config) -> Iterator[Ledger]:
    """The ledger API nodes of a scale deployment append to (``meterline migrate --to``): the
    Kafka topic, claimed and confirmed in the shared dedupe store, rejected events stored as
    dead letters in PostgreSQL, the config file's meters created in the shared catalog first.
    Any number of these may append beside running API nodes: the dedupe store is shared. The
    sink workers (``meterline worker``) bring what it appends into ClickHouse."""
    for driver in ("psycopg", "psycopg_pool", "confluent_kafka", "clickhouse_connect"):
        import_extra(driver, "scale")  # a ConfigError naming the extra, before anything opens
    from meterline.adapters.kafka.ledger import KafkaLedger, ensure_topic

    clock = SystemClock()
    stores = open_scale_stores(config, clock)
    try:
        ensure_scale_meters(config, stores.catalog.meters)
        k = config.kafka
        ensure_topic(k.bootstrap_servers, k.topic, k.partitions, k.replication_factor)
        kafka = KafkaLedger(
            k.bootstrap_servers,
            k.topic,
            stores.catalog.meters,
            stores.dedupe,
            clock.now_us,
            cap=config.ingest.max_group_cardinality,
            delivery_timeout=k.delivery_timeout,
            dead_letters=stores.catalog.dead_letters,
            held=stores.catalog.quarantine,
            unknown_subjects=UnknownSubjects(config.ingest.unknown_subjects),
        )
        try:
            yield kafka
        finally:
            kafka.close()
    finally:
        stores.close()


def _existing_store(config: Config) -> Path:
    """The embedded store's file; a data directory without one is ``no_store`` (a command that
    reads or checks a store never creates one in a mistyped directory)."""
    path = config.storage.data_dir / DB_FILE
    if not path.exists():
        raise NotFound(f"no meterline store in {config.storage.data_dir}", code="no_store")
    return path


def _embedded_only(config: Config) -> None:
    if config.storage.engine != "embedded":
        raise ConfigError(
            f"storage.engine = {config.storage.engine!r}: this command works on the embedded store's data directory;"
            " in scale mode run API nodes (`meterline serve`) and sink workers (`meterline worker`) (docs/scale.md)"
        )


def ingest_limits(config: Config) -> Limits:
    """What ingest checks each event's size and time against."""
    late = config.ingest.late_arrival_window
    return Limits(
        config.server.max_events_per_request,
        _us(config.ingest.future_skew.total_seconds()),
        None if late is None else _us(late.total_seconds()),
    )


def raw_events_us(config: Config) -> int | None:
    """``retention.raw_events`` (in scale mode also the older ``clickhouse.raw_retention``) in µs."""
    span = config.retention.raw_events
    if span is None and config.storage.engine == "scale":
        span = config.clickhouse.raw_retention
    return None if span is None else _us(span.total_seconds())


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def identity_provider(config: Config, clock: Clock) -> IdentityProvider | None:
    """The dashboard's single sign-on provider (OIDC), or None when ``[oidc]`` is off."""
    if not config.oidc.enabled:
        return None
    import_extra("authlib", "sso")
    from meterline.adapters.oidc import OidcProvider

    o = config.oidc
    return OidcProvider(o.issuer, o.client_id, o.client_secret, o.scopes, lambda: clock.now_us() // 1_000_000)
