"""The PostgreSQL schema, as numbered migrations applied in order at start.

A migration, once released, never changes: a new schema change is a new number at the end.
Most are SQL; one that must compute in Python (17: keyed hashes of the dedupe keys) is a
function run in the same transaction.
``migrate`` runs under a transaction-scoped advisory lock, so API nodes and workers starting
together apply each migration exactly once; a database newer than this code is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg.rows import TupleRow

from meterline.adapters.postgres.dedupe_upgrade import hash_dedupe_keys
from meterline.domain.errors import ConfigError

MIGRATION_LOCK = 0x6D657465726C696E  # "meterlin": the advisory lock migrations hold

Step = str | Callable[[psycopg.Connection[TupleRow]], None]
MIGRATIONS: list[tuple[int, str, Step]] = [
    (
        1,
        "catalog: customers, keys, meters, features, entitlements, grants, notifications, portal",
        """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE customers (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, key TEXT NOT NULL,
    name TEXT, timezone TEXT NOT NULL, metadata BYTEA,
    created_us BIGINT NOT NULL, updated_us BIGINT NOT NULL, deleted_us BIGINT
);
CREATE UNIQUE INDEX customers_live_key ON customers (namespace, key) WHERE deleted_us IS NULL;
CREATE TABLE customer_subjects (
    namespace TEXT NOT NULL, subject TEXT NOT NULL, customer TEXT NOT NULL,
    PRIMARY KEY (namespace, subject)
);
CREATE INDEX customer_subjects_by_customer ON customer_subjects (customer);
CREATE TABLE namespace_settings (namespace TEXT PRIMARY KEY, unknown_subjects TEXT NOT NULL);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL, scopes TEXT NOT NULL,
    hash BYTEA NOT NULL UNIQUE, prefix TEXT NOT NULL, created_us BIGINT NOT NULL, revoked_us BIGINT,
    seq BIGSERIAL NOT NULL
);

CREATE TABLE meters (
    key BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, namespace TEXT NOT NULL, slug TEXT NOT NULL,
    spec BYTEA NOT NULL, created_us BIGINT NOT NULL, deleted_us BIGINT
);
CREATE UNIQUE INDEX meters_live_slug ON meters (namespace, slug) WHERE deleted_us IS NULL;

CREATE TABLE features (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, key TEXT NOT NULL, spec BYTEA NOT NULL,
    created_us BIGINT NOT NULL, archived_us BIGINT
);
CREATE UNIQUE INDEX features_live_key ON features (namespace, key) WHERE archived_us IS NULL;
CREATE TABLE entitlements (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, customer TEXT NOT NULL, feature TEXT NOT NULL,
    spec BYTEA NOT NULL, created_us BIGINT NOT NULL, deleted_us BIGINT
);
CREATE UNIQUE INDEX entitlements_live ON entitlements (namespace, customer, feature) WHERE deleted_us IS NULL;
CREATE TABLE grants (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, entitlement TEXT NOT NULL, spec BYTEA NOT NULL,
    created_us BIGINT NOT NULL, voided_us BIGINT
);
CREATE INDEX grants_by_entitlement ON grants (entitlement);

CREATE TABLE notification_channels (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, spec BYTEA NOT NULL,
    created_us BIGINT NOT NULL, updated_us BIGINT NOT NULL, deleted_us BIGINT
);
CREATE TABLE notification_rules (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, spec BYTEA NOT NULL,
    created_us BIGINT NOT NULL, updated_us BIGINT NOT NULL, deleted_us BIGINT
);
-- Once per (rule, customer, feature, threshold, period), across retries and API nodes.
CREATE TABLE notification_events (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, rule TEXT NOT NULL, customer TEXT NOT NULL,
    feature TEXT NOT NULL, threshold TEXT NOT NULL, period_start BIGINT NOT NULL,
    payload BYTEA NOT NULL, created_us BIGINT NOT NULL,
    UNIQUE (rule, customer, feature, threshold, period_start)
);
CREATE INDEX notification_events_by_time ON notification_events (namespace, created_us);
CREATE TABLE deliveries (
    event TEXT NOT NULL, channel TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    next_attempt_us BIGINT, last_error TEXT, last_status INTEGER, updated_us BIGINT NOT NULL,
    PRIMARY KEY (event, channel)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_us);
CREATE TABLE delivery_attempts (
    seq BIGSERIAL PRIMARY KEY, event TEXT NOT NULL, channel TEXT NOT NULL, at_us BIGINT NOT NULL,
    state TEXT NOT NULL, status_code INTEGER, error TEXT, duration_ms INTEGER
);
CREATE INDEX delivery_attempts_by_event ON delivery_attempts (event, channel, at_us);

CREATE TABLE portal_tokens (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, subject TEXT NOT NULL, meters BYTEA,
    created_us BIGINT NOT NULL, expires_us BIGINT NOT NULL, invalidated_us BIGINT
);
""",
    ),
    (
        2,
        "the shared dedupe store: one row per idempotency key, pending (a lease) or confirmed",
        """
-- confirmed: at_us is when; pending: at_us is when the lease lapses. The primary key is what
-- lets exactly one claimant hold a key (ports.dedupe, docs/scale.md).
CREATE TABLE dedupe_keys (
    namespace TEXT NOT NULL, source TEXT NOT NULL, id TEXT NOT NULL,
    digest BYTEA NOT NULL, token UUID NOT NULL, confirmed BOOLEAN NOT NULL, at_us BIGINT NOT NULL,
    PRIMARY KEY (namespace, source, id)
);
CREATE INDEX dedupe_keys_by_time ON dedupe_keys (at_us);
""",
    ),
    (
        3,
        "billing: plan versions, subscriptions, finalized invoices (immutable), voids, billed windows, credits",
        """
CREATE TABLE plan_versions (
    namespace TEXT NOT NULL, plan TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    body BYTEA NOT NULL, created_us BIGINT NOT NULL, updated_us BIGINT NOT NULL,
    PRIMARY KEY (namespace, plan, version)
);
-- billed_through_us: the end of the last finalized window (moves with the invoice).
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, customer TEXT NOT NULL, body BYTEA NOT NULL,
    start_us BIGINT NOT NULL, end_us BIGINT, billed_through_us BIGINT NOT NULL,
    previous TEXT, created_us BIGINT NOT NULL
);
CREATE INDEX subscriptions_by_customer ON subscriptions (namespace, customer, start_us);
-- Finalized invoices: `body` is the exact JSON document. The unique key (subscription, period,
-- replaces) makes a billing run idempotent across nodes; numbers are gap-free per namespace
-- because the counter row moves in the transaction of the insert.
CREATE TABLE invoices (
    id BIGSERIAL PRIMARY KEY, namespace TEXT NOT NULL, number TEXT NOT NULL, customer TEXT NOT NULL,
    subscription TEXT NOT NULL, period_start_us BIGINT NOT NULL, period_end_us BIGINT NOT NULL,
    replaces TEXT NOT NULL, issued_us BIGINT NOT NULL, body BYTEA NOT NULL,
    UNIQUE (namespace, number), UNIQUE (subscription, period_start_us, replaces)
);
CREATE INDEX invoices_by_customer ON invoices (namespace, customer, period_start_us);
CREATE FUNCTION invoices_never_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'finalized invoices never change' USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER invoices_never_update BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_never_change();
CREATE TRIGGER invoices_never_truncate BEFORE TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_never_change();
CREATE TABLE invoice_numbers (namespace TEXT PRIMARY KEY, last BIGINT NOT NULL);
CREATE TABLE invoice_voids (
    invoice BIGINT PRIMARY KEY REFERENCES invoices (id), reason TEXT NOT NULL, voided_us BIGINT NOT NULL,
    replaced_by TEXT
);
CREATE TABLE billed_windows (
    id BIGSERIAL PRIMARY KEY, namespace TEXT NOT NULL, customer TEXT NOT NULL, subscription TEXT NOT NULL,
    window_start_us BIGINT NOT NULL, window_end_us BIGINT NOT NULL, invoice BIGINT NOT NULL,
    origin BIGINT NOT NULL, body BYTEA NOT NULL
);
CREATE INDEX billed_windows_by_customer ON billed_windows (namespace, customer, window_end_us);
CREATE INDEX billed_windows_by_subscription ON billed_windows (subscription, window_start_us);
CREATE TABLE credit_grants (
    namespace TEXT NOT NULL, customer TEXT NOT NULL, key TEXT NOT NULL, body BYTEA NOT NULL,
    created_us BIGINT NOT NULL, voided_us BIGINT,
    PRIMARY KEY (namespace, customer, key)
);
-- Every burn (negative amount: given back by a void). Amounts are exact decimal text.
CREATE TABLE credit_burns (
    seq BIGSERIAL PRIMARY KEY, namespace TEXT NOT NULL, customer TEXT NOT NULL, grant_key TEXT NOT NULL,
    invoice BIGINT NOT NULL, amount TEXT NOT NULL
);
CREATE INDEX credit_burns_by_customer ON credit_burns (namespace, customer);
""",
    ),
    (
        4,
        "OpenMeter's customer members (description, primaryEmail, currency, billingAddress); meter updates",
        """
-- the members as one JSON object, kept and answered as sent (domain.customers.model.CustomerInput.profile)
ALTER TABLE customers ADD COLUMN profile BYTEA;
-- when a meter's definition (name, description, metadata) last changed
ALTER TABLE meters ADD COLUMN updated_us BIGINT;
""",
    ),
    (
        5,
        "dead letters: every event an API node rejected, with its raw body, reason and receipt time",
        """
CREATE TABLE dead_letters (
    id BIGSERIAL PRIMARY KEY, namespace TEXT NOT NULL, received_us BIGINT NOT NULL,
    reason TEXT NOT NULL, message TEXT NOT NULL, source TEXT, event_id TEXT, raw BYTEA NOT NULL
);
CREATE INDEX dead_letters_by_namespace ON dead_letters (namespace, id);
""",
    ),
    (
        6,
        "the quarantine: events of subjects no customer claims yet, held until one does (ports.quarantine)",
        """
CREATE TABLE quarantine (
    id BIGSERIAL PRIMARY KEY, namespace TEXT NOT NULL, source TEXT NOT NULL, event_id TEXT NOT NULL,
    type TEXT NOT NULL, subject TEXT NOT NULL, time_us BIGINT NOT NULL, received_us BIGINT NOT NULL,
    digest BYTEA NOT NULL, raw BYTEA NOT NULL, token TEXT NOT NULL,
    released_us BIGINT, lease_us BIGINT, delivered_us BIGINT, outcome TEXT, counted_at TEXT
);
CREATE UNIQUE INDEX quarantine_held_key ON quarantine (namespace, source, event_id) WHERE released_us IS NULL;
CREATE INDEX quarantine_held_subjects ON quarantine (namespace, subject, id) WHERE released_us IS NULL;
CREATE INDEX quarantine_undelivered ON quarantine (id) WHERE released_us IS NOT NULL AND delivered_us IS NULL;
CREATE INDEX quarantine_copies ON quarantine (namespace, source, event_id, token);
""",
    ),
    (
        7,
        "sink fences: the newest epoch of each log partition a sink worker writes (zombie workers refused)",
        """
CREATE TABLE sink_fences (stream TEXT PRIMARY KEY, epoch BIGINT NOT NULL);
""",
    ),
    (
        8,
        "dead letters re-submitted: when, with what outcome and by whom (the letter stays, marked)",
        """
ALTER TABLE dead_letters ADD COLUMN resubmitted_us BIGINT, ADD COLUMN resubmitted_status TEXT,
    ADD COLUMN resubmitted_by TEXT;
""",
    ),
    (
        9,
        "follower progress: how far the sink workers' followers (alert rules) handled each stream",
        """
CREATE TABLE follower_progress (
    follower TEXT NOT NULL, stream TEXT NOT NULL, done BIGINT NOT NULL, PRIMARY KEY (follower, stream)
);
""",
    ),
    (
        10,
        "dead-letter re-submission leases: a request re-submitting a letter holds it without a connection",
        """
ALTER TABLE dead_letters ADD COLUMN resubmit_token TEXT, ADD COLUMN resubmit_lease_us BIGINT;
""",
    ),
    (
        11,
        "group values each meter admitted, shared by the API nodes (the cardinality cap across nodes)",
        """
CREATE TABLE group_value_counts (
    meter BIGINT NOT NULL, dim TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (meter, dim)
);
CREATE TABLE group_values (
    meter BIGINT NOT NULL, dim TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (meter, dim, value)
);
""",
    ),
    (
        12,
        "event corrections: the journal of acknowledged voids and amends (audit, history, billing citations)",
        """
CREATE TABLE event_corrections (
    id BIGSERIAL PRIMARY KEY, namespace TEXT NOT NULL, source TEXT NOT NULL, event_id TEXT NOT NULL,
    stream TEXT NOT NULL, original BIGINT NOT NULL, seq BIGINT NOT NULL, target BIGINT NOT NULL,
    action TEXT NOT NULL, reason TEXT NOT NULL, actor TEXT NOT NULL, received_us BIGINT NOT NULL,
    type TEXT NOT NULL, subject TEXT NOT NULL, time_us BIGINT NOT NULL, raw BYTEA,
    was_type TEXT NOT NULL, was_subject TEXT NOT NULL, was_time_us BIGINT NOT NULL,
    UNIQUE (stream, seq)
);
CREATE INDEX event_corrections_key ON event_corrections (namespace, source, event_id, stream, original, seq);
CREATE INDEX event_corrections_received ON event_corrections (namespace, received_us, id);
""",
    ),
    (
        13,
        "erasure of a subject: the audit records and the erased form of every log entry they rewrote",
        """
-- counts: JSON object; through: JSON object partition -> offset after the last record covered.
CREATE TABLE erasures (
    id BIGSERIAL PRIMARY KEY, namespace TEXT NOT NULL, erased_us BIGINT NOT NULL, actor TEXT NOT NULL,
    reason TEXT NOT NULL, pseudonym TEXT NOT NULL, counts BYTEA NOT NULL, through BYTEA NOT NULL,
    finished_us BIGINT
);
CREATE INDEX erasures_by_namespace ON erasures (namespace, id);
-- The erased form of each log entry an erasure rewrote, by its place in the log: the sink
-- workers write this instead of the record whenever they read it again (ports.erasure).
-- kept: SHA-256 of the original version (no identifier of it is kept).
CREATE TABLE erased_entries (
    stream TEXT NOT NULL, seq BIGINT NOT NULL, namespace TEXT NOT NULL, erasure BIGINT NOT NULL,
    type TEXT NOT NULL, subject TEXT NOT NULL, time_us BIGINT NOT NULL, received_us BIGINT NOT NULL,
    id TEXT NOT NULL, raw BYTEA NOT NULL, corrects BIGINT NOT NULL, kept BYTEA NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE INDEX erased_entries_by_erasure ON erased_entries (erasure);
""",
    ),
    (
        14,
        "resumable erasures: the subject and the step reached while unfinished (they hold the sink workers)",
        """
-- subject: set while the erasure is unfinished (what a resumed run needs), NULL once finished;
-- an unfinished erasure with a subject holds every sink worker off (adapters.postgres.fence).
-- step: the last step done (ports.erasure.Step).
ALTER TABLE erasures ADD COLUMN subject TEXT, ADD COLUMN step INTEGER NOT NULL DEFAULT 0;
CREATE INDEX erasures_unfinished ON erasures (id) WHERE finished_us IS NULL AND subject IS NOT NULL;
""",
    ),
    (
        15,
        "customers: a deleted customer keeps the subject keys it had (its claims are released)",
        """
-- JSON array, set when the customer is deleted (adapters.postgres.customers)
ALTER TABLE customers ADD COLUMN deleted_subjects BYTEA;
""",
    ),
    (
        16,
        "erasures: how long the log may keep the subject's records, and what Redis's files went through",
        """
-- log_kept_ms: the topic's retention.ms + segment.ms at the erasure (-1 forever, NULL unknown);
-- redis_files: JSON object, what was done to Redis's AOF and RDB snapshot (NULL: no Redis).
ALTER TABLE erasures ADD COLUMN log_kept_ms BIGINT, ADD COLUMN redis_files BYTEA;
""",
    ),
    (
        17,
        "erasures: the catalog's tables rewritten after the erasure (VACUUM FULL), and what that gave",
        """
-- rewrite_due: set when the erasure finishes, cleared once every table it changed is rewritten
-- (adapters.postgres.compaction); postgres_files: JSON object, the outcome per table.
-- Erasures finished before this migration are not due: rewrite those tables once by hand.
ALTER TABLE erasures ADD COLUMN rewrite_due BOOLEAN NOT NULL DEFAULT false, ADD COLUMN postgres_files BYTEA;
CREATE INDEX erasures_rewrite_due ON erasures (id) WHERE rewrite_due;
""",
    ),
    (
        18,
        "the shared dedupe store keeps keyed hashes of keys and payload digests, never an identifier",
        hash_dedupe_keys,  # adapters.postgres.dedupe_upgrade: the rows copied under their keyed names
    ),
]


def migrate(conn: psycopg.Connection[TupleRow]) -> list[int]:
    """Apply, in the caller's transaction, every migration the database lacks; the numbers
    applied. ``ConfigError`` when the database has a migration this code does not know."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    known = {v for v, _, _ in MIGRATIONS}
    if done - known:
        raise ConfigError(
            f"the PostgreSQL schema is at migration {max(done)}, newer than this version of meterline knows"
            f" ({max(known)}): upgrade meterline"
        )
    applied = []
    for version, name, sql in MIGRATIONS:
        if version not in done:
            if isinstance(sql, str):
                conn.execute(sql.encode())
            else:
                sql(conn)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied.append(version)
    return applied
