"""Schema and connections.

Durability: the database runs in WAL mode. ``fsync="full"`` (``synchronous=FULL``) syncs the
WAL on every commit, so an acknowledged event survives power loss; ``"normal"`` syncs only at
checkpoints and survives a process crash (``kill -9``) but may lose the last commits on power
loss. Either way a commit is atomic: an aggregated batch's rollup deltas and the aggregator's
offset land together or not at all; the dedupe index is derived from the ledger and rebuilt
from it after a crash.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

from meterline.adapters.sqlite import rollups, summaries
from meterline.domain.decimals import EXACT, stored

SCHEMA_VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- The ledger: append-only, one row per accepted event, in commit order.
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL, source TEXT NOT NULL, id TEXT NOT NULL,
    type TEXT NOT NULL, subject TEXT NOT NULL, time_us INTEGER NOT NULL,
    received_us INTEGER NOT NULL, digest BLOB NOT NULL, raw BLOB NOT NULL,
    -- the entry's link in the hash chain (adapters.sqlite.chain, domain.integrity.chain)
    chain BLOB,
    -- a correction entry's audit record as the chain covers it (content format 2: JSON
    -- [action, original, reason, actor]); NULL for an event, and for entries before format 2
    correction BLOB
);

-- Corrections (domain.events.corrections): each is itself a ledger entry in `events` (same
-- key as the event it corrects, appended by the ack path); this table says which entries are
-- corrections, of which original (the key's first entry), why and by whom.
CREATE TABLE IF NOT EXISTS corrections (
    seq INTEGER PRIMARY KEY, original INTEGER NOT NULL, namespace TEXT NOT NULL,
    action TEXT NOT NULL, reason TEXT NOT NULL, actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS corrections_by_original ON corrections (original, seq);

-- Erasures of subjects (adapters.sqlite.erasure, docs/erasure.md): one audit row each (who,
-- when, why, how much; the subject's pseudonym, never the subject).
CREATE TABLE IF NOT EXISTS erasures (
    id INTEGER PRIMARY KEY, namespace TEXT NOT NULL, erased_us INTEGER NOT NULL, actor TEXT NOT NULL,
    reason TEXT NOT NULL, pseudonym TEXT NOT NULL, through_seq INTEGER NOT NULL, counts BLOB NOT NULL
);
-- Ledger entries an erasure rewrote: the content digest the chain links (`kept`, from before
-- the erasure), the content digest of the erased form (`content`: a later edit is still seen)
-- and the dedupe index's hash of the original key (the index is rebuilt from the ledger).
CREATE TABLE IF NOT EXISTS ledger_erased (
    seq INTEGER PRIMARY KEY, erasure INTEGER NOT NULL, kept BLOB NOT NULL, content BLOB NOT NULL,
    key_hash INTEGER NOT NULL
);
-- Ledger entries removed by retention (adapters.sqlite.retention, docs/retention.md): the
-- "pruned" marker that keeps their place in the hash chain. `kept`: the content digest the
-- chain links (as it was when the entry was removed); `chain`: the entry's stored link;
-- `key_hash`: the dedupe index's keyed hash of its key (a correction of it is refused as
-- pruned, not as unknown). No identifier, subject or payload is kept.
CREATE TABLE IF NOT EXISTS ledger_pruned (
    seq INTEGER PRIMARY KEY, kept BLOB NOT NULL, chain BLOB NOT NULL, key_hash INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_pruned_by_key ON ledger_pruned (key_hash);
-- The erasure chain (adapters.sqlite.erasure_chain, domain.integrity.erasures): one link per
-- erasure task that rewrote entries, covering the erased forms' digests (`ledger_erased.content`
-- of the rows whose `link` is `pos`); the last link's place and hash are `meta.erasure_head`.
CREATE TABLE IF NOT EXISTS erasure_chain (pos INTEGER PRIMARY KEY, erasure INTEGER NOT NULL, hash BLOB NOT NULL);

-- Meter queries over a range that starts or ends inside a minute read the events of that
-- partial minute through this index (domain.meters.edges); created on first start of an
-- existing store, like every IF NOT EXISTS object here.
CREATE INDEX IF NOT EXISTS events_by_type_time ON events (namespace, type, time_us);

-- Idempotency keys (namespace, source, id) are found through the dedupe index beside this
-- file (adapters.sqlite.dedupe_index), derived from `events` and `quarantine`.

CREATE TABLE IF NOT EXISTS meters (
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL, slug TEXT NOT NULL,
    spec BLOB NOT NULL,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, deleted_us INTEGER,
    -- events with seq <= backfill_to were in the ledger before the meter existed;
    -- backfill_done is how far the backfill has applied them.
    backfill_to INTEGER NOT NULL, backfill_done INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS meters_live_slug ON meters (namespace, slug) WHERE deleted_us IS NULL;

-- Rollups: derived from the ledger, rebuilt bit for bit by `meterline rebuild`.
CREATE TABLE IF NOT EXISTS rollups (
    meter INTEGER NOT NULL, level INTEGER NOT NULL, subject TEXT NOT NULL,
    bucket INTEGER NOT NULL, group_key TEXT NOT NULL,
    -- total, low, high, last_v: decimals.stored() form (integer, or canonical text)
    cnt INTEGER NOT NULL, total, low, high,
    last_t INTEGER, last_seq INTEGER, last_v,
    PRIMARY KEY (meter, level, subject, bucket, group_key)
) WITHOUT ROWID;
-- The quarter-hour rollups by time: a short range across every subject (a zone's ragged edge,
-- adapters.sqlite.per_subject) reads the few rows there instead of seeking each subject.
-- Values stay in the table (an update of a row's values leaves this index alone).
CREATE INDEX IF NOT EXISTS rollups_by_time ON rollups (meter, bucket, subject) WHERE level = 900;

CREATE TABLE IF NOT EXISTS uniques (
    meter INTEGER NOT NULL, level INTEGER NOT NULL, subject TEXT NOT NULL,
    bucket INTEGER NOT NULL, group_key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (meter, level, subject, bucket, group_key, value)
) WITHOUT ROWID;

-- APPROX_UNIQUE_COUNT: a HyperLogLog sketch per bucket (adapters.sqlite.sketches), derived
-- like the rollups; canonical bytes (domain.meters.sketch).
CREATE TABLE IF NOT EXISTS sketches (
    meter INTEGER NOT NULL, level INTEGER NOT NULL, subject TEXT NOT NULL,
    bucket INTEGER NOT NULL, group_key TEXT NOT NULL, sketch BLOB NOT NULL,
    PRIMARY KEY (meter, level, subject, bucket, group_key)
) WITHOUT ROWID;

-- Summaries of the rollups (adapters.sqlite.summaries): meter-wide rows (subject '') per
-- quarter hour, hour and day, and per-subject day rows; derived like the rollups.
CREATE TABLE IF NOT EXISTS summaries (
    meter INTEGER NOT NULL, level INTEGER NOT NULL, subject TEXT NOT NULL,
    bucket INTEGER NOT NULL, group_key TEXT NOT NULL,
    cnt INTEGER NOT NULL, total, low, high,
    last_t INTEGER, last_seq INTEGER, last_v,
    PRIMARY KEY (meter, level, subject, bucket, group_key)
) WITHOUT ROWID;
-- The day rows by time, with the values a fold reads: a partial month's few days across every
-- subject (adapters.sqlite.per_subject.days_by_time) are one index range instead of a seek per
-- subject. An update of a day row's values updates its entry here too.
CREATE INDEX IF NOT EXISTS summaries_days_by_time ON summaries (meter, bucket, subject, cnt, total, low, high)
    WHERE level = 86400;

-- Ledger entries per namespace, type and UTC quarter hour of event time, up to the
-- aggregator's offset (reconciliation's accepted events); derived like the rollups.
CREATE TABLE IF NOT EXISTS ledger_counts (
    namespace TEXT NOT NULL, type TEXT NOT NULL, bucket INTEGER NOT NULL, cnt INTEGER NOT NULL,
    PRIMARY KEY (namespace, type, bucket)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS group_values (
    meter INTEGER NOT NULL, dim TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (meter, dim, value)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS meter_subjects (
    meter INTEGER NOT NULL, subject TEXT NOT NULL, PRIMARY KEY (meter, subject)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL, received_us INTEGER NOT NULL,
    reason TEXT NOT NULL, message TEXT NOT NULL,
    source TEXT, event_id TEXT, raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (namespace, received_us);
-- Dead letters re-submitted through ingest (services.resubmit): one row each, written in the
-- transaction that appended the event again, so a second or concurrent re-submission finds it.
CREATE TABLE IF NOT EXISTS resubmissions (
    dead_letter INTEGER PRIMARY KEY, namespace TEXT NOT NULL, resubmitted_us INTEGER NOT NULL,
    status TEXT NOT NULL, actor TEXT NOT NULL
);

-- Customers: the subject keys that attribute usage to each.
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, key TEXT NOT NULL,
    name TEXT, timezone TEXT NOT NULL, metadata BLOB,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, deleted_us INTEGER,
    -- OpenMeter's descriptive members (description, primaryEmail, currency, billingAddress) as JSON
    profile BLOB,
    -- a deleted customer's subject keys (JSON array): it is kept, its claims are released
    deleted_subjects BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS customers_live_key ON customers (namespace, key) WHERE deleted_us IS NULL;
CREATE TABLE IF NOT EXISTS customer_subjects (
    namespace TEXT NOT NULL, subject TEXT NOT NULL, customer TEXT NOT NULL,
    PRIMARY KEY (namespace, subject)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS customer_subjects_by_customer ON customer_subjects (customer);
CREATE TABLE IF NOT EXISTS namespace_settings (namespace TEXT PRIMARY KEY, unknown_subjects TEXT NOT NULL);

-- Valid events whose subject belongs to no customer (policy "quarantine"). The dedupe index
-- refers to them as -id until they are released into the ledger.
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL, source TEXT NOT NULL, event_id TEXT NOT NULL, type TEXT NOT NULL,
    subject TEXT NOT NULL, time_us INTEGER NOT NULL, received_us INTEGER NOT NULL,
    digest BLOB NOT NULL, raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_by_subject ON quarantine (namespace, subject, id);

CREATE TABLE IF NOT EXISTS features (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, key TEXT NOT NULL, spec BLOB NOT NULL,
    created_us INTEGER NOT NULL, archived_us INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS features_live_key ON features (namespace, key) WHERE archived_us IS NULL;

CREATE TABLE IF NOT EXISTS entitlements (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, customer TEXT NOT NULL, feature TEXT NOT NULL,
    spec BLOB NOT NULL, created_us INTEGER NOT NULL, deleted_us INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS entitlements_live ON entitlements (namespace, customer, feature)
    WHERE deleted_us IS NULL;

CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, entitlement TEXT NOT NULL, spec BLOB NOT NULL,
    created_us INTEGER NOT NULL, voided_us INTEGER
);
CREATE INDEX IF NOT EXISTS grants_by_entitlement ON grants (entitlement);

CREATE TABLE IF NOT EXISTS notification_channels (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, spec BLOB NOT NULL,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, deleted_us INTEGER
);
CREATE TABLE IF NOT EXISTS notification_rules (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, spec BLOB NOT NULL,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, deleted_us INTEGER
);
-- One row per alert that fired. The UNIQUE key makes "once per customer, rule, threshold and
-- period" hold across retries and restarts: the insert commits with the usage that crossed it.
CREATE TABLE IF NOT EXISTS notification_events (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, rule TEXT NOT NULL, customer TEXT NOT NULL,
    feature TEXT NOT NULL, threshold TEXT NOT NULL, period_start INTEGER NOT NULL,
    payload BLOB NOT NULL, created_us INTEGER NOT NULL,
    UNIQUE (rule, customer, feature, threshold, period_start)
);
CREATE TABLE IF NOT EXISTS deliveries (
    event TEXT NOT NULL, channel TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    next_attempt_us INTEGER, last_error TEXT, last_status INTEGER, updated_us INTEGER NOT NULL,
    PRIMARY KEY (event, channel)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_us);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    event TEXT NOT NULL, channel TEXT NOT NULL, at_us INTEGER NOT NULL, state TEXT NOT NULL,
    status_code INTEGER, error TEXT, duration_ms INTEGER
);
CREATE INDEX IF NOT EXISTS delivery_attempts_by_event ON delivery_attempts (event, channel, at_us);

CREATE TABLE IF NOT EXISTS portal_tokens (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, subject TEXT NOT NULL, meters BLOB,
    created_us INTEGER NOT NULL, expires_us INTEGER NOT NULL, invalidated_us INTEGER
);

CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL, name TEXT NOT NULL, scopes TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE, prefix TEXT NOT NULL,
    created_us INTEGER NOT NULL, revoked_us INTEGER
);

-- Billing. Plan versions: a published body never changes (a new version is a new row).
CREATE TABLE IF NOT EXISTS plan_versions (
    namespace TEXT NOT NULL, plan TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    body BLOB NOT NULL, created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL,
    PRIMARY KEY (namespace, plan, version)
) WITHOUT ROWID;
-- Subscriptions: billed_through_us is the end of the last finalized window (moves in the
-- same transaction as the invoice).
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, customer TEXT NOT NULL, body BLOB NOT NULL,
    start_us INTEGER NOT NULL, end_us INTEGER, billed_through_us INTEGER NOT NULL,
    previous TEXT, created_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriptions_by_customer ON subscriptions (namespace, customer, start_us);
-- Finalized invoices: `body` is the exact JSON document and is never updated. The UNIQUE key
-- (subscription, period, replaces) makes a billing run idempotent; numbers are gap-free per
-- namespace because the counter moves in the same transaction as the insert.
CREATE TABLE IF NOT EXISTS invoices (
    id INTEGER PRIMARY KEY, namespace TEXT NOT NULL, number TEXT NOT NULL, customer TEXT NOT NULL,
    subscription TEXT NOT NULL, period_start_us INTEGER NOT NULL, period_end_us INTEGER NOT NULL,
    replaces TEXT NOT NULL, issued_us INTEGER NOT NULL, body BLOB NOT NULL,
    UNIQUE (namespace, number), UNIQUE (subscription, period_start_us, replaces)
);
CREATE INDEX IF NOT EXISTS invoices_by_customer ON invoices (namespace, customer, period_start_us);
CREATE TRIGGER IF NOT EXISTS invoices_never_update BEFORE UPDATE ON invoices
BEGIN SELECT RAISE(ABORT, 'finalized invoices never change'); END;
CREATE TRIGGER IF NOT EXISTS invoices_never_delete BEFORE DELETE ON invoices
BEGIN SELECT RAISE(ABORT, 'finalized invoices never change'); END;
CREATE TABLE IF NOT EXISTS invoice_numbers (namespace TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS invoice_voids (
    invoice INTEGER PRIMARY KEY, reason TEXT NOT NULL, voided_us INTEGER NOT NULL, replaced_by TEXT
);
-- What each invoiced window was billed for, newest last: late usage is priced against it.
CREATE TABLE IF NOT EXISTS billed_windows (
    id INTEGER PRIMARY KEY, namespace TEXT NOT NULL, customer TEXT NOT NULL, subscription TEXT NOT NULL,
    window_start_us INTEGER NOT NULL, window_end_us INTEGER NOT NULL, invoice INTEGER NOT NULL,
    origin INTEGER NOT NULL, body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS billed_windows_by_customer ON billed_windows (namespace, customer, window_end_us);
-- Prepaid credit grants, and every burn (negative amount: restored by a void).
CREATE TABLE IF NOT EXISTS credit_grants (
    namespace TEXT NOT NULL, customer TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL,
    created_us INTEGER NOT NULL, voided_us INTEGER,
    PRIMARY KEY (namespace, customer, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credit_burns (
    namespace TEXT NOT NULL, customer TEXT NOT NULL, grant_key TEXT NOT NULL, invoice INTEGER NOT NULL,
    amount TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS credit_burns_by_customer ON credit_burns (namespace, customer);
"""


WRITER_CACHE_KIB = -65536
READER_CACHE_KIB = -8192


def connect(path: Path, *, fsync: str = "full", readonly: bool = False) -> sqlite3.Connection:
    """Open the database with meterline's pragmas and SQL functions."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=30000")
    # The page cache is per connection: 64 MiB for the one writer, 8 MiB for each reader thread
    # (the OS page cache holds the file once for all of them), so many reader threads cannot
    # add up to gigabytes.
    conn.execute(f"PRAGMA cache_size={READER_CACHE_KIB if readonly else WRITER_CACHE_KIB}")
    conn.execute("PRAGMA temp_store=MEMORY")
    # Deleted or overwritten content is zeroed in the file (and in the WAL frames that carry the
    # change), so an erasure leaves no old bytes in free space (docs/erasure.md).
    conn.execute("PRAGMA secure_delete=ON")
    if readonly:
        conn.execute("PRAGMA query_only=1")
    _register_functions(conn)
    return conn


SECURE_DELETE_KEY = "secure_delete"
"""In ``meta``: ``always`` when every delete of the store's life zeroed its bytes; absent in a
store from before, whose free pages may hold old bytes until its first erasure vacuums it."""


def create_schema(conn: sqlite3.Connection) -> None:
    fresh = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone() is None
    conn.executescript(DDL)
    if fresh:
        conn.execute("INSERT OR IGNORE INTO meta VALUES (?, 'always')", (SECURE_DELETE_KEY,))
    _add_columns(conn)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    # The aggregator's offset. A store written before rollups moved out of the ingest
    # transaction has them current through the whole ledger: it starts at the head.
    conn.execute("INSERT OR IGNORE INTO meta SELECT 'aggregated_seq', CAST(coalesce(max(seq), 0) AS TEXT) FROM events")
    # A store from before the summaries gets them from its rollups and ledger (once).
    summaries.fill(conn, rollups.write_fold)


_ADDED_COLUMNS = (
    ("customers", "profile", "BLOB"),
    ("customers", "deleted_subjects", "BLOB"),
    ("events", "chain", "BLOB"),
    ("events", "correction", "BLOB"),
    ("ledger_erased", "link", "INTEGER"),  # its erasure-chain link (adapters.sqlite.erasure_chain)
    ("rollups", "first_t", "INTEGER"),  # TIME_WEIGHTED_SUM: a bucket's first reading (adapters.sqlite.gauges)
    ("rollups", "first_seq", "INTEGER"),
)
"""Columns added to tables of an existing store after it was created (``ALTER TABLE``, once)."""


def _add_columns(conn: sqlite3.Connection) -> None:
    for table, column, kind in _ADDED_COLUMNS:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _register_functions(conn: sqlite3.Connection) -> None:
    conn.create_function("dec_add", 2, _dec_add, deterministic=True)
    conn.create_function("dec_min", 2, _dec_min, deterministic=True)
    conn.create_function("dec_max", 2, _dec_max, deterministic=True)
    conn.create_function("dec_neg", 1, _dec_neg, deterministic=True)
    conn.create_aggregate("dec_sum", 1, _DecSum)  # type: ignore[arg-type]  # typeshed expects int steps
    conn.create_aggregate("dec_least", 1, _DecLeast)  # type: ignore[arg-type]
    conn.create_aggregate("dec_greatest", 1, _DecGreatest)  # type: ignore[arg-type]


def _dec_add(a: int | str | None, b: int | str | None) -> int | str | None:
    if a is None or b is None:
        return a if b is None else b
    return stored(EXACT.add(Decimal(a), Decimal(b)))


def _dec_min(a: int | str | None, b: int | str | None) -> int | str | None:
    if a is None or b is None:
        return a if b is None else b
    return a if Decimal(a) <= Decimal(b) else b


def _dec_max(a: int | str | None, b: int | str | None) -> int | str | None:
    if a is None or b is None:
        return a if b is None else b
    return a if Decimal(a) >= Decimal(b) else b


def _dec_neg(a: int | str | None) -> int | str | None:
    return None if a is None else stored(-Decimal(a))


class _DecFold:
    """Aggregate over decimals in stored form: folds with ``combine``; NULL when there are none."""

    def __init__(self) -> None:
        self.acc: Decimal | None = None

    def step(self, value: int | str | None) -> None:
        if value is not None:
            d = Decimal(value)
            self.acc = d if self.acc is None else self.combine(self.acc, d)

    def finalize(self) -> int | str | None:
        return None if self.acc is None else stored(self.acc)

    def combine(self, a: Decimal, b: Decimal) -> Decimal:
        raise NotImplementedError


class _DecSum(_DecFold):
    def combine(self, a: Decimal, b: Decimal) -> Decimal:
        return EXACT.add(a, b)


class _DecLeast(_DecFold):
    def combine(self, a: Decimal, b: Decimal) -> Decimal:
        return a if a <= b else b


class _DecGreatest(_DecFold):
    def combine(self, a: Decimal, b: Decimal) -> Decimal:
        return a if a >= b else b
