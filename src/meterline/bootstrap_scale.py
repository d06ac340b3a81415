"""Config in, an API node out, in either storage mode: ``build_node`` is what the HTTP face
starts from.

An API node of scale mode (``storage.engine = "scale"``) keeps no state of its own:

- ingest goes through the Kafka ledger and the shared dedupe store (``adapters.kafka``:
  claim, write with ``acks=all``, confirm; a 2xx only after every delivery report), rejected
  events to the PostgreSQL dead-letter store before the answer;
- the catalog and billing are the PostgreSQL stores, shared by every node;
- usage (meter queries, entitlement values, invoices) is read from the ClickHouse rollups the
  sink workers (``meterline worker``) write; every usage answer states how far the workers had
  applied the log when it was read (``Meterline-As-Of``, ``Meterline-As-Of-Position``);
- entitlement values are computed per request from the period's usage
  (``services.queried_usage``): a ClickHouse query, or with ``[redis] counters`` the live usage
  counters the workers feed in Redis, shared by every node (``services.counter_feed``).

- reconciliation counts the raw events the workers applied against the usage tables
  (ClickHouse) and the dead letters, the quarantine and the invoices (PostgreSQL)
  (``ScaleReconciliationCounts``).

What scale mode does not offer yet is answered with 501 ``not_supported`` naming the mode, or
documented as absent (docs/scale.md, "Not offered in scale mode yet").
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meterline.bootstrap import (
    Catalog,
    Gauge,
    Node,
    ScaleStores,
    build,
    ensure_scale_meters,
    ingest_limits,
    open_scale_stores,
    raw_events_us,
    run_settings,
    scale_alerts,
    usage_counters,
    webhook_dispatcher,
)
from meterline.config import Config
from meterline.domain.clock import Clock, SystemClock
from meterline.domain.customers.model import UnknownSubjects
from meterline.domain.entitlements.model import Entitlement
from meterline.domain.errors import Backfilling, InvalidInput, MeterlineError, StorageUnavailable
from meterline.domain.events.model import Candidate, Outcome
from meterline.domain.meters.model import Meter
from meterline.domain.meters.query import MeterQuery, QueryLimits, Row
from meterline.ports.correction_log import StoredOriginal, StoredOriginals
from meterline.ports.corrections import Corrections
from meterline.ports.erasure import ErasableKeys, Erasures, RewritableFiles
from meterline.ports.ledger import EventFilter, Ledger, LedgerEntry, StoredEvent
from meterline.ports.meters import UsageReader
from meterline.ports.reconciliation import BilledWindow, Change, Counted, LedgerCheck
from meterline.ports.status import StoreStatus
from meterline.runtime import freshness
from meterline.runtime.background import Monitor, Ticker
from meterline.runtime.extras import import_extra
from meterline.services.batch_alerts import BatchAlerts
from meterline.services.billing import Billing, SchedulerSettings, build_billing
from meterline.services.corrections import CorrectionService
from meterline.services.counter_feed import CountedUsage
from meterline.services.customers import CustomerService
from meterline.services.dead_letters import DeadLetterService
from meterline.services.dispatch import Dispatcher
from meterline.services.entitlement_values import EntitlementValueService
from meterline.services.entitlements import EntitlementService
from meterline.services.erasure import ErasureService
from meterline.services.erasure_deadline import ErasureDeadline
from meterline.services.features import FeatureService
from meterline.services.keys import KeyService
from meterline.services.log_corrections import LogCorrections
from meterline.services.log_erasure import ErasureGate, LogErasures, RewriteSettings
from meterline.services.meters import MeterService
from meterline.services.notifications import NotificationService
from meterline.services.portal import PortalService
from meterline.services.quarantine import QuarantineReleaser, ReleasingCustomers
from meterline.services.queried_usage import QueriedEntitlementUsage, QueriedPeriodUsage
from meterline.services.resubmit import Resubmission
from meterline.services.screen_cache import ForgettingSettings, ScreenCache
from meterline.services.usage_queries import UsageQueries

log = logging.getLogger("meterline.scale")
ERASURE_RESUME_EVERY = 10.0
"""Seconds between an API node's looks for an erasure a process began and did not finish."""

if TYPE_CHECKING:
    from meterline.adapters.clickhouse.client import Connection
    from meterline.adapters.clickhouse.reads import ClickHouseEvents, ClickHouseMeterValues, ClickHouseProgress
    from meterline.adapters.clickhouse.reconciliation import ClickHouseReconciliationCounts
    from meterline.adapters.clickhouse.usage import ClickHouseUsage
    from meterline.adapters.kafka.ledger import KafkaLedger
    from meterline.adapters.postgres.reconciliation import PgReconciliationCounts
    from meterline.ports.live_usage import UsageCounters
    from meterline.ports.reconciliation import ReconciliationCounts


def build_node(config: Config, clock: Clock | None = None) -> Node:
    """The node the config's ``storage.engine`` names, wired and not started."""
    if config.storage.engine == "scale":
        return build_scale(config, clock or SystemClock())
    return build(config, clock)


class ScaleLedger:
    """The ledger of an API node: appends through Kafka, lists what the workers stored (after
    the same wait as a usage read: ``note``)."""

    def __init__(
        self, kafka: KafkaLedger, events: ClickHouseEvents, note: Callable[[], None], gate: ErasureGate
    ) -> None:
        self._kafka = kafka
        self._events = events
        self._note = note
        self._gate = gate

    def append(self, namespace: str, candidates: Sequence[Candidate]) -> Future[builtins.list[Outcome]]:
        return self._kafka.append(namespace, candidates)

    def read(self, after: int, limit: int) -> builtins.list[LedgerEntry]:
        return []  # the sink workers read the log's partitions, not a global sequence

    def position(self) -> int:
        return 0

    def list(self, namespace: str, f: EventFilter, *, limit: int) -> builtins.list[StoredEvent]:
        self._note()
        return self._gate.read(lambda: self._events.list(namespace, f, limit=limit))


class NotedUsage:
    """A usage reader that first waits, as the request's freshness asks, for the sink workers
    to apply this node's acknowledged writes, then notes on the request's freshness record how
    far they had applied the log (``ClickHouseProgress.applied``): the rollups it answers
    from hold at least that much.

    ``consistency=strong`` (the default) waits, at most ``max_wait`` seconds, until every
    partition is applied up to the last record this node had acknowledged when the read
    started: a client reads its own writes through the node it wrote through. Writes through
    other nodes are reflected once the workers applied them; ``consistency=eventual`` skips
    the wait. Whatever the freshness, a read never answers while an erasure is unfinished
    (``gate``: it waits for it, at most ``max_wait``, then 503 ``erasure_in_progress``)."""

    def __init__(
        self,
        usage: ClickHouseUsage,
        progress: ClickHouseProgress,
        heads: Callable[[], dict[int, int]],
        max_wait: float,
        gate: ErasureGate,
        pause: float = 0.02,
    ) -> None:
        self.gate = gate
        self._usage = usage
        self._progress = progress
        self._heads = heads
        self._max_wait = max_wait
        self._pause = pause

    def note(self) -> None:
        record = freshness.current()
        if record is None:
            return
        if record.min_position is not None:
            raise InvalidInput(
                "Meterline-Min-Position is embedded mode's; a scale-mode log has a position per partition:"
                " send the Meterline-Log-Positions of the ingest as Meterline-Min-Log-Positions",
                code="invalid_position",
            )
        applied = self._progress.applied()
        wanted = dict(self._heads()) if record.wait else {}
        for partition, offset in (record.min_log_positions or {}).items():
            wanted[partition] = max(wanted.get(partition, 0), offset)
        if wanted:
            wait = self._max_wait
            deadline = time.monotonic() + wait
            while any(applied.done.get(p, 0) < head for p, head in wanted.items()):
                if time.monotonic() >= deadline:
                    log.warning(
                        "usage read without waiting longer for the sink workers", extra={"waited": self._max_wait}
                    )
                    break
                time.sleep(self._pause)
                applied = self._progress.applied()
        record.as_of_position, record.as_of_us = applied.records, applied.as_of_us

    def query(self, meter: Meter, query: MeterQuery) -> builtins.list[Row]:
        self.note()
        self.backfilled(meter)
        return self.gate.read(lambda: self._usage.query(meter, query))

    def backfilled(self, meter: Meter) -> None:
        """A meter created (or regrouped) after events arrived: wait, as the read's freshness
        asks and at most ``max_wait``, until the workers have folded those events into it;
        then 503 ``meter_backfilling`` (as embedded mode answers), never part of its usage."""
        record = freshness.current()
        if record is None or not record.wait:
            return
        deadline = time.monotonic() + self._max_wait
        while (left := self._progress.backfill_of(meter.key)) is not None:
            if time.monotonic() >= deadline:
                applied, to = left
                raise Backfilling(
                    f"meter {meter.spec.slug!r} is being derived from the raw events ({applied} of {to} log"
                    " positions applied; a new meter, or a groupBy change): retry shortly",
                    applied=applied,
                    to=to,
                )
            time.sleep(self._pause)


class GatedUsage:
    """A usage reader whose reads never answer while an erasure is unfinished (``ErasureGate``)."""

    def __init__(self, reader: UsageReader, gate: ErasureGate) -> None:
        self._reader = reader
        self._gate = gate

    def query(self, meter: Meter, query: MeterQuery) -> builtins.list[Row]:
        return self._gate.read(lambda: self._reader.query(meter, query))


class GatedValues:
    """A meter's subjects and group values, never listed while an erasure is unfinished (the
    subject and its pseudonym would both be listed)."""

    def __init__(self, values: ClickHouseMeterValues, gate: ErasureGate) -> None:
        self._values = values
        self._gate = gate

    def subjects(self, meter: Meter, start: int | None, end: int | None) -> builtins.list[str]:
        return self._gate.read(lambda: self._values.subjects(meter, start, end))

    def group_values(self, meter: Meter, dimension: str, start: int | None, end: int | None) -> builtins.list[str]:
        return self._gate.read(lambda: self._values.group_values(meter, dimension, start, end))


class ScaleReconciliationCounts:
    """Reconciliation's counts in scale mode (``ports.reconciliation``): the log as the sink
    workers applied it and the usage tables from ClickHouse, receipts and invoices from
    PostgreSQL. A count read waits as a usage read does (``NotedUsage``: this node's
    acknowledged writes applied, new meters' backfills done, at most ``max_wait`` each) and
    notes the position its snapshot reflects on the request's freshness record."""

    def __init__(self, ch: ClickHouseReconciliationCounts, pg: PgReconciliationCounts, usage: NotedUsage) -> None:
        self._ch = ch
        self._pg = pg
        self._usage = usage

    def counted(
        self, namespace: str, meters: builtins.list[Meter], start: int, end: int, periods: Sequence[int] = ()
    ) -> Counted:
        self._usage.note()
        for meter in meters:
            self._usage.backfilled(meter)
        counted = self._usage.gate.read(lambda: self._ch.counted(namespace, meters, start, end))
        record = freshness.current()
        if record is not None:
            record.as_of_position, record.as_of_us = counted.position, counted.position_us
        return counted

    def rejected(self, namespace: str, start: int, end: int) -> dict[tuple[str, str, int], int]:
        return self._pg.rejected(namespace, start, end)

    def quarantined(self, namespace: str, start: int, end: int) -> dict[tuple[str, int], int]:
        return self._pg.quarantined(namespace, start, end)

    def ledger_check(
        self, namespace: str, meters: builtins.list[Meter], start: int, end: int, through: int
    ) -> LedgerCheck:
        invoiced = self._pg.invoiced(namespace, start * 1_000_000, end * 1_000_000)
        return self._usage.gate.read(lambda: self._ch.ledger_check(namespace, meters, start, end, through, invoiced))

    def billed_changes(
        self, namespace: str, meters: builtins.list[Meter], windows: builtins.list[BilledWindow], through: int
    ) -> builtins.list[dict[str, Change]]:
        return self._usage.gate.read(lambda: self._ch.billed_changes(namespace, meters, windows, through))

    def namespaces(self) -> builtins.list[str]:
        return self._pg.namespaces()


class NotedOriginals:
    """The stored originals; one not found is looked up again after the same wait as a usage
    read (``NotedUsage.note``): an event acknowledged through this node is found once the
    workers stored it, and one already stored is found without waiting."""

    def __init__(self, originals: StoredOriginals, note: Callable[[], None]) -> None:
        self._originals = originals
        self._note = note

    def original(self, namespace: str, source: str, event_id: str) -> StoredOriginal | None:
        found = self._originals.original(namespace, source, event_id)
        if found is None:
            self._note()
            found = self._originals.original(namespace, source, event_id)
        return found


class ScaleStatus:
    """Readiness of a scale-mode node: PostgreSQL, ClickHouse and the Kafka brokers each answer."""

    def __init__(self, probes: Sequence[tuple[str, Callable[[], None]]], progress: ClickHouseProgress) -> None:
        self._probes = probes
        self._progress = progress

    def probe(self) -> None:
        failed = []
        for name, probe in self._probes:
            try:
                probe()
            except Exception:
                failed.append(name)
        if failed:
            raise StorageUnavailable(f"{' and '.join(failed)} cannot be reached")

    def writable(self) -> tuple[bool, str | None]:
        return True, None

    def commits(self) -> int:
        return 0

    def queued(self) -> int:
        return 0

    def ledger_events(self) -> int:
        return self._progress.applied().records

    def pending_backfill(self) -> int:
        return sum(self._progress.backfilling().values())

    def stale_views(self) -> list[str]:
        return []

    def followup_failures(self) -> int:
        return 0


@dataclass
class ScaleNode:
    """An API node of scale mode and what it holds open (see the module docstring)."""

    config: Config
    clock: Clock
    monitor: Monitor
    status: StoreStatus
    catalog: Catalog
    billing: Billing
    dispatcher: Dispatcher
    stores: ScaleStores
    _ledger: ScaleLedger
    counts: ReconciliationCounts | None = None
    _close: list[Callable[[], None]] = field(default_factory=list)
    tickers: list[Ticker] = field(default_factory=list)
    """Background loops ``start`` starts (``close`` stops them through ``_close``)."""
    releaser: QuarantineReleaser | None = None
    """Writes the events customer saves released from the quarantine (also run by a ticker)."""
    erasure_deadline: ErasureDeadline | None = None
    """Whether the topic's retention deletes an erased subject's records within
    ``erasure.max_delay`` (a ``/readyz`` warning when not)."""
    erasure_files: Callable[[], str | None] | None = None
    """The catalog's tables an erasure changed and that are not rewritten yet (a ``/readyz``
    warning, ``METER-008``)."""

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def lag_seconds(self) -> float:
        return 0.0  # the workers' lag is theirs to report; each answer states what it reflects

    def gauges(self) -> list[Gauge]:
        return [
            (
                "meterline_sink_applied_records",
                "Log records the sink workers have applied to ClickHouse, over every partition",
                self.status.ledger_events,
            ),
        ]

    def start(self) -> None:
        self.dispatcher.start()
        self.stores.start()
        self.billing.scheduler.start()
        for ticker in self.tickers:
            ticker.start()

    def close(self) -> None:
        self.billing.scheduler.close()
        self.dispatcher.close()
        for close in reversed(self._close):
            close()
        self.stores.close()


def build_scale(config: Config, clock: Clock, monitor: Monitor | None = None) -> ScaleNode:
    """An API node over the engines of ``[kafka]``, ``[clickhouse]``, ``[postgres]`` and
    ``[dedupe]``: the catalog's migrations applied, the topic and the ClickHouse tables created
    when missing, the config file's meters created in the shared catalog."""
    monitor = monitor or Monitor(stuck_after=config.health.stuck_after.total_seconds())
    for driver in ("psycopg", "psycopg_pool", "confluent_kafka", "clickhouse_connect"):
        import_extra(driver, "scale")  # a ConfigError naming the extra, before anything opens
    stores = open_scale_stores(config, clock, monitor)
    closers: list[Callable[[], None]] = []
    try:
        return _wire(config, clock, monitor, stores, closers)
    except BaseException:
        for close in reversed(closers):
            close()
        stores.close()
        raise


def _wire(
    config: Config, clock: Clock, monitor: Monitor, stores: ScaleStores, closers: list[Callable[[], None]]
) -> ScaleNode:
    from meterline.adapters.clickhouse.client import Connection
    from meterline.adapters.clickhouse.corrections import ClickHouseCorrectedRanges
    from meterline.adapters.clickhouse.reads import ClickHouseEvents, ClickHouseMeterValues, ClickHouseProgress
    from meterline.adapters.clickhouse.reconciliation import ClickHouseReconciliationCounts
    from meterline.adapters.clickhouse.usage import ClickHouseUsage
    from meterline.adapters.kafka.ledger import KafkaLedger, ensure_topic
    from meterline.adapters.postgres.fence import PgFence
    from meterline.adapters.postgres.reconciliation import PgReconciliationCounts

    pg, ch, k = stores.catalog, config.clickhouse, config.kafka
    ensure_scale_meters(config, pg.meters)
    conn = Connection(ch.url, ch.database, user=ch.user, password=ch.password)
    closers.append(conn.close)
    retention = raw_events_us(config)
    retention = None if retention is None else retention // 1_000_000
    raw_usage = ClickHouseUsage(
        conn, pg.meters.live, clock.now_us, dedupe_window=ch.dedupe_window, raw_retention_seconds=retention
    )
    progress = ClickHouseProgress(conn, k.topic)
    ensure_topic(k.bootstrap_servers, k.topic, k.partitions, k.replication_factor)
    deadline = _erasure_deadline(config)
    deadline.check()  # logged at start: a topic that keeps erased subjects' records too long
    screen = ScreenCache(
        pg.quarantine,
        clock.now_us,
        int(config.ingest.unknown_subjects_cache.total_seconds() * 1_000_000),
        UnknownSubjects(config.ingest.unknown_subjects),
    )
    kafka = KafkaLedger(
        k.bootstrap_servers,
        k.topic,
        pg.meters,
        stores.dedupe,
        clock.now_us,
        cap=config.ingest.max_group_cardinality,
        delivery_timeout=k.delivery_timeout,
        dead_letters=pg.dead_letters,
        held=screen,
        unknown_subjects=UnknownSubjects(config.ingest.unknown_subjects),
        group_values=pg.group_values,
    )
    closers.append(kafka.close)
    releaser = QuarantineReleaser(pg.quarantine, kafka, timeout=k.delivery_timeout)
    release = Ticker("quarantine-release", releaser.tick, lambda: 5.0, monitor)
    closers.append(release.close)
    gate = ErasureGate(PgFence(pg.db, config.postgres.dsn).erasures, config.aggregation.max_wait)
    usage = NotedUsage(raw_usage, progress, kafka.heads, config.aggregation.max_wait, gate)
    counters = usage_counters(config, closers)
    counted: UsageReader = usage
    if counters is not None:  # entitlement usage from the live counters once they hold it
        streams = {p: f"{k.topic}:{p}" for p in range(k.partitions)}
        touched = ClickHouseCorrectedRanges(conn).touches  # usage that corrections touched: from ClickHouse
        live = CountedUsage(counters, streams, kafka.heads, usage, config.aggregation.max_wait, corrected=touched)
        counted = GatedUsage(live, gate)  # the live counters move at the erasure's last step
    dispatcher = webhook_dispatcher(config, pg.notifications, clock, monitor)
    values = GatedValues(ClickHouseMeterValues(conn, usage.note), gate)
    corrections = _corrections(config, clock, stores, conn, kafka, usage)
    erasures = _erasures(config, clock, stores, conn, kafka, progress, counters, deadline, closers)
    # an erasure a process began and did not finish holds the workers: any node finishes it
    resume = Ticker("erasure-resume", erasures.resume, lambda: ERASURE_RESUME_EVERY, monitor)
    closers.append(resume.close)
    catalog = _catalog(
        config, clock, stores, usage, counted, values, dispatcher.wake, releaser, kafka, screen, corrections, erasures
    )
    cfg = config.billing
    billing = build_billing(
        dataclasses.replace(stores.billing(QueriedPeriodUsage(usage), clock), corrections=corrections),
        clock,
        run_settings(config.billing),
        scheduler=SchedulerSettings(cfg.scheduler_enabled, cfg.scheduler_interval.total_seconds()),
        max_report_windows=config.query.max_rows,
        monitor=monitor,
    )
    status = ScaleStatus([("PostgreSQL", pg.probe), ("ClickHouse", progress.probe), ("Kafka", kafka.probe)], progress)
    ledger = ScaleLedger(kafka, ClickHouseEvents(conn), usage.note, gate)
    counts = ScaleReconciliationCounts(ClickHouseReconciliationCounts(conn), PgReconciliationCounts(pg.db), usage)
    node = ScaleNode(config, clock, monitor, status, catalog, billing, dispatcher, stores, ledger, counts, closers)
    node.tickers += [release, resume]
    node.releaser = releaser
    node.erasure_deadline = deadline
    node.erasure_files = erasures.problem
    return node


def _corrections(
    config: Config, clock: Clock, stores: ScaleStores, conn: Connection, kafka: KafkaLedger, usage: NotedUsage
) -> Corrections:
    """Voids and amends through the log (``services.log_corrections``); the raw events of the
    hours they touch are kept past ``retention.raw_events`` (``adapters.clickhouse.kept``)."""
    from meterline.adapters.clickhouse.corrections import ClickHouseOriginals
    from meterline.adapters.clickhouse.kept import ClickHouseKeptHours
    from meterline.adapters.postgres.corrections import PgCorrectionJournal

    originals = NotedOriginals(ClickHouseOriginals(conn), usage.note)
    kept = ClickHouseKeptHours(conn, raw_events_us(config), clock.now_us)
    journal = PgCorrectionJournal(stores.catalog.db)
    return LogCorrections(originals, journal, kafka, kept, clock, stores.dedupe, stores.catalog.quarantine)


def _alerting(alerts: BatchAlerts, wake: Callable[[], None]) -> Callable[[Entitlement], None]:
    """Evaluate the alert rules of an entitlement whose value a write on this node changed
    without usage (as OpenMeter's balance worker does). The write stands if that fails: the
    rules decide on the value and on the events fired, so the customer's next batch fires
    what this evaluation would have."""

    def changed(ent: Entitlement) -> None:
        try:
            if alerts.changed(ent):
                wake()
        except MeterlineError:
            log.warning("alert rules not evaluated after an entitlement change", exc_info=True)

    return changed


def _erasures(
    config: Config,
    clock: Clock,
    stores: ScaleStores,
    conn: Connection,
    kafka: KafkaLedger,
    progress: ClickHouseProgress,
    counters: UsageCounters | None,
    deadline: ErasureDeadline,
    closers: list[Callable[[], None]],
) -> LogErasures:
    """Erasure of a subject over the log, ClickHouse and PostgreSQL (``services.log_erasure``):
    the workers held off through the fence while it rewrites; Redis's files rewritten at the end
    when Redis holds the dedupe keys or the live counters."""
    from meterline.adapters.clickhouse.erasure import ClickHouseErasure
    from meterline.adapters.clickhouse.rebuild import settled
    from meterline.adapters.kafka.ledger import log_ends
    from meterline.adapters.postgres.compaction import PgCatalogFiles
    from meterline.adapters.postgres.erasure import PgErasureCatalog
    from meterline.adapters.postgres.fence import PgFence

    k, e = config.kafka, config.erasure
    fence = PgFence(stores.catalog.db, config.postgres.dsn)

    def heads() -> dict[int, int]:
        ends = log_ends(k.bootstrap_servers, k.topic, k.partitions)
        for partition, head in kafka.heads().items():  # what this node acknowledged, whatever the broker says
            ends[partition] = max(ends.get(partition, 0), head)
        return ends

    return LogErasures(
        PgErasureCatalog(stores.catalog.db, clock.now_us),
        ClickHouseErasure(conn),
        stores.catalog.meters.live,
        heads=heads,
        applied=lambda: progress.applied().done,
        hold=fence.maintenance,
        unfinished=lambda seconds: settled(conn, seconds),
        max_wait=config.aggregation.max_wait,
        counters=None if counters is None else counters.move_subject,
        keys=stores.dedupe if isinstance(stores.dedupe, ErasableKeys) else None,  # Redis: its keys erased there
        log_kept=deadline.kept_ms,
        files=_redis_files(config, closers),
        files_wait=config.erasure.redis_rewrite_wait,
        tables=PgCatalogFiles(config.postgres.dsn),
        rewrite=RewriteSettings(e.rewrite_lock_timeout, e.rewrite_attempts, e.rewrite_backoff),
    )


def _erasure_deadline(config: Config) -> ErasureDeadline:
    from meterline.adapters.kafka.retention import topic_retention

    k = config.kafka
    max_delay_ms = int(config.erasure.max_delay.total_seconds() * 1000)
    return ErasureDeadline(k.topic, lambda: topic_retention(k.bootstrap_servers, k.topic), max_delay_ms)


def _redis_files(config: Config, closers: list[Callable[[], None]]) -> RewritableFiles | None:
    """Redis's persistence files, when Redis holds something an erasure changes (the dedupe
    store's keys, the live usage counters)."""
    if config.dedupe.backend != "redis" and not config.redis.counters:
        return None
    module = import_extra("meterline.adapters.redis.persistence", "scale")
    client = import_extra("redis", "scale").Redis.from_url(
        config.redis.url, socket_timeout=10, socket_connect_timeout=10
    )
    files: RewritableFiles = module.RedisFiles(client)
    return files


def _catalog(
    config: Config,
    clock: Clock,
    stores: ScaleStores,
    usage: NotedUsage,
    counted: UsageReader,
    values: GatedValues,
    wake: Callable[[], None],
    releaser: QuarantineReleaser,
    ledger: Ledger,
    screen: ScreenCache,
    corrections: Corrections,
    erasures: Erasures,
) -> Catalog:
    from meterline.adapters.postgres.dead_letters import PgResubmitter

    pg = stores.catalog
    customers = pg.customers
    entitlements = EntitlementService(pg.entitlements, pg.features, customers, pg.meters, clock)
    entitlements.changed = _alerting(scale_alerts(pg.db, pg.meters, counted, clock, config.alerts.baseline_days), wake)
    queried = QueriedEntitlementUsage(customers, pg.entitlements, pg.features, pg.grants, pg.meters, counted, clock)
    people = CustomerService(
        ReleasingCustomers(customers, releaser, screen.forget),
        ForgettingSettings(customers, screen),
        pg.quarantine,
        default_policy=UnknownSubjects(config.ingest.unknown_subjects),
    )
    return Catalog(
        customers=people,
        keys=KeyService(pg.keys, clock),
        corrections=CorrectionService(
            corrections,
            clock,
            future_skew_us=int(config.ingest.future_skew.total_seconds() * 1_000_000),
            policy=people.policy,
            owned=lambda namespace, subject: people.owner(namespace, subject) is not None,
        ),
        dead_letters=DeadLetterService(pg.dead_letters),
        resubmission=Resubmission(
            PgResubmitter(pg.db, ledger, clock.now_us, config.kafka.delivery_timeout + 5), clock, ingest_limits(config)
        ),
        erasures=ErasureService(erasures),
        entitlements=entitlements,
        features=FeatureService(pg.features, pg.grants, pg.meters, entitlements, clock),
        notifications=NotificationService(
            pg.notifications,
            pg.notifications,
            pg.notifications,
            pg.features,
            clock,
            allow_private_targets=config.alerts.allow_private_webhook_targets,
            wake=wake,
        ),
        portal=PortalService(
            pg.portal, clock, default_ttl=config.portal.token_ttl, max_ttl=config.portal.max_token_ttl
        ),
        meters=MeterService(
            pg.meters,
            values,
            pg.features,
            clock,
        ),
        usage=UsageQueries(pg.meters, usage),
        values=EntitlementValueService(
            entitlements, queried, clock, QueryLimits(config.query.max_windows, config.query.max_rows)
        ),
    )
