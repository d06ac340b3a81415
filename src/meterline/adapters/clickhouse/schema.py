"""The ClickHouse tables of scale mode, created at start when missing.

- ``events``: raw accepted events (MergeTree, partitioned by receive month, TTL =
  ``retention.raw_events`` after the later of the event's time and its receipt, so an hour's
  events all outlive the hour's start by the retention; set again at start when the setting
  changed; times in
  microseconds, the event id read from the raw CloudEvent), written by the sink workers;
  a correction entry (``domain.events.corrections``) is a row too, its ``corrects`` the seq
  of the version it supersedes in the same stream (0 for an ordinary event; see
  :mod:`.corrections`) and its ``correction`` the audit record the chain covers (link format 2,
  :mod:`.chain`; empty for an event);
- ``usage_rollups``: per (meter, bucket size, subject, bucket, group) the exact states every
  aggregation needs — count, sum, min, max and the latest (time, seq, value) — as
  ``SimpleAggregateFunction`` columns of an AggregatingMergeTree, merged exactly in the
  background and at query time (``Decimal256(38)``: 38 digits each side of the point);
- ``usage_uniques``: UNIQUE_COUNT values per bucket (ReplacingMergeTree);
- ``usage_sketches``: APPROX_UNIQUE_COUNT HyperLogLog registers per bucket
  (``domain.meters.sketch``): each batch inserts, per key, the (index, rank) pairs of the
  registers its values set, as a ``SimpleAggregateFunction(maxMap, ...)`` of an
  AggregatingMergeTree, so background merges and queries keep each register's maximum — the
  sketch of every value the bucket saw, whatever the batches, their order or a repeated one;
- ``usage_corrections``: one row per applied correction entry: the version it supersedes
  (``corrects``), whether it is a void, and the type, subject and time of the version it put
  in and of the one it took out — the hours a query answers from the raw events instead of
  the rollups (:mod:`.corrections`);
- ``kept_events`` and ``kept_hours``: the raw events of every (namespace, subject, UTC hour) a
  correction touches, copied out of ``events`` before its TTL can remove them (no TTL here:
  a corrected hour is answered from its raw events for as long as the rollups are kept,
  :mod:`.kept`), and the hours kept;
- ``usage_gauges``: TIME_WEIGHTED_SUM states per bucket, one row per batch (a MergeTree: two
  batches' states join only in time order, so queries join them, ``.gauges``);
- ``usage_dims``: the group values and subjects each meter has seen (the cardinality cap);
- ``ledger_chain``: the hash chain of each partition, one link per applied batch with its
  entries' seqs, content digests (hex, one after another) and receipt times
  (``domain.integrity.batches``; no TTL: a
  link outlives the raw rows retention removes, which then verify as pruned);
  ``ledger_erased``: the content digest of each raw row an erasure rewrote (empty: deleted);
  ``ledger_meta``: the ledger's random id (named in exported chain heads) and when the chain
  began (``chain_since_us``);
- ``usage_progress``: per consumed stream (the live offset, a meter's backfill, a Kafka
  partition) how far it is applied, the range being applied, and the receipt time of the
  newest event applied (what API nodes state their answers' freshness from); a
  ReplacingMergeTree by version.

Every table written in batches keeps ``non_replicated_deduplication_window`` blocks' tokens.
On a cluster each table becomes ``ReplicatedMergeTree``-family ``..._local`` tables on every
shard behind ``Distributed`` tables sharded by ``cityHash64(meter, subject)`` (docs/scale.md);
the statements below are the single-server variant.
"""

from __future__ import annotations

import re

from meterline.adapters.clickhouse.client import Connection

DECIMAL = "Decimal256(38)"
_KEY = [("meter", "UInt64"), ("level", "UInt32"), ("subject", "String"), ("bucket", "Int64"), ("group_key", "String")]
ROLLUPS = [*_KEY, ("count", "UInt64"), ("total", DECIMAL), ("low", DECIMAL), ("high", DECIMAL),
           ("latest", f"Tuple(Int64, UInt64, {DECIMAL})")]  # fmt: skip
UNIQUES = [*_KEY, ("value", "String")]
REGISTERS = "Tuple(Array(UInt16), Array(UInt8))"
SKETCHES = [*_KEY, ("registers", REGISTERS)]
GAUGES = [*_KEY, ("count", "UInt64"), ("area", DECIMAL), ("first_at", "Tuple(Int64, UInt64)"),
          ("last_at", f"Tuple(Int64, UInt64, {DECIMAL})")]  # fmt: skip
EVENTS = [("namespace", "String"), ("source", "String"), ("type", "String"), ("subject", "String"),
          ("time_us", "Int64"), ("received_us", "Int64"), ("raw", "String"), ("stream", "String"),
          ("seq", "UInt64"), ("corrects", "UInt64"), ("correction", "String")]  # fmt: skip
DIMS = [("meter", "UInt64"), ("dim", "String"), ("value", "String"), ("is_subject", "UInt8")]
CORRECTIONS = [("namespace", "String"), ("stream", "String"), ("seq", "UInt64"), ("corrects", "UInt64"),
               ("void", "UInt8"), ("type", "String"), ("subject", "String"), ("time_us", "Int64"),
               ("was_type", "String"), ("was_subject", "String"), ("was_time_us", "Int64")]  # fmt: skip
CHAIN = [("stream", "String"), ("start", "UInt64"), ("end", "UInt64"), ("prev", "String"), ("hash", "String"),
         ("seqs", "Array(UInt64)"), ("digests", "String"), ("received", "Array(Int64)"),
         ("format", "UInt8")]  # fmt: skip
ERASED = [("stream", "String"), ("seq", "UInt64"), ("content", "String"), ("erasure", "String"),
          ("erased_us", "Int64")]  # fmt: skip
PROGRESS = [("stream", "String"), ("done", "UInt64"), ("to", "UInt64"), ("pending_end", "UInt64"),
            ("pending_meters", "Array(UInt64)"), ("version", "UInt64"), ("applied_us", "Int64")]  # fmt: skip


def statements(window: int, retention_seconds: int | None) -> list[str]:
    dedupe = f"SETTINGS non_replicated_deduplication_window = {window}"
    received = "toDateTime(intDiv(received_us, 1000000))"
    ttl = "" if retention_seconds is None else f"TTL {raw_ttl(retention_seconds)}"
    return [
        f"""CREATE TABLE IF NOT EXISTS events (
            namespace LowCardinality(String), source String, type LowCardinality(String), subject String,
            time_us Int64, received_us Int64, raw String, stream LowCardinality(String), seq UInt64,
            id String MATERIALIZED JSONExtractString(raw, 'id'), corrects UInt64 DEFAULT 0, correction String DEFAULT ''
        ) ENGINE = MergeTree PARTITION BY toYYYYMM({received}) ORDER BY (namespace, subject, time_us, stream, seq)
        {ttl} {dedupe}""",
        f"""CREATE TABLE IF NOT EXISTS usage_rollups (
            meter UInt64, level UInt32, subject String, bucket Int64, group_key String,
            count SimpleAggregateFunction(sum, UInt64),
            total SimpleAggregateFunction(sum, {DECIMAL}),
            low SimpleAggregateFunction(min, {DECIMAL}),
            high SimpleAggregateFunction(max, {DECIMAL}),
            latest SimpleAggregateFunction(max, Tuple(Int64, UInt64, {DECIMAL}))
        ) ENGINE = AggregatingMergeTree ORDER BY (meter, level, subject, bucket, group_key) {dedupe}""",
        f"""CREATE TABLE IF NOT EXISTS usage_uniques (
            meter UInt64, level UInt32, subject String, bucket Int64, group_key String, value String
        ) ENGINE = ReplacingMergeTree ORDER BY (meter, level, subject, bucket, group_key, value) {dedupe}""",
        f"""CREATE TABLE IF NOT EXISTS usage_sketches (
            meter UInt64, level UInt32, subject String, bucket Int64, group_key String,
            registers SimpleAggregateFunction(maxMap, {REGISTERS})
        ) ENGINE = AggregatingMergeTree ORDER BY (meter, level, subject, bucket, group_key) {dedupe}""",
        f"""CREATE TABLE IF NOT EXISTS usage_gauges (
            meter UInt64, level UInt32, subject String, bucket Int64, group_key String, count UInt64,
            area {DECIMAL}, first_at Tuple(Int64, UInt64), last_at Tuple(Int64, UInt64, {DECIMAL})
        ) ENGINE = MergeTree ORDER BY (meter, level, subject, bucket, group_key) {dedupe}""",
        f"""CREATE TABLE IF NOT EXISTS usage_dims (
            meter UInt64, dim String, value String, is_subject UInt8
        ) ENGINE = ReplacingMergeTree ORDER BY (meter, is_subject, dim, value) {dedupe}""",
        f"""CREATE TABLE IF NOT EXISTS kept_events (
            namespace LowCardinality(String), source String, type LowCardinality(String), subject String,
            time_us Int64, received_us Int64, raw String, stream LowCardinality(String), seq UInt64,
            id String MATERIALIZED JSONExtractString(raw, 'id'), corrects UInt64 DEFAULT 0, correction String DEFAULT ''
        ) ENGINE = MergeTree ORDER BY (namespace, subject, time_us, stream, seq) {dedupe}""",
        """CREATE TABLE IF NOT EXISTS kept_hours (namespace String, subject String, hour_us Int64)
        ENGINE = ReplacingMergeTree ORDER BY (namespace, subject, hour_us)""",
        f"""CREATE TABLE IF NOT EXISTS usage_corrections (
            namespace String, stream String, seq UInt64, corrects UInt64, void UInt8,
            type String, subject String, time_us Int64, was_type String, was_subject String, was_time_us Int64
        ) ENGINE = ReplacingMergeTree ORDER BY (namespace, stream, seq) {dedupe}""",
        """CREATE TABLE IF NOT EXISTS usage_progress (
            stream String, done UInt64, to UInt64, pending_end UInt64, pending_meters Array(UInt64),
            version UInt64, applied_us Int64 DEFAULT 0
        ) ENGINE = ReplacingMergeTree(version) ORDER BY stream""",
        f"""CREATE TABLE IF NOT EXISTS ledger_chain (
            stream String, start UInt64, end UInt64, prev String, hash String,
            seqs Array(UInt64), digests String, received Array(Int64), format UInt8 DEFAULT 1
        ) ENGINE = MergeTree ORDER BY (stream, start) {dedupe}""",
        """CREATE TABLE IF NOT EXISTS ledger_erased (
            stream String, seq UInt64, content String, erasure String, erased_us Int64
        ) ENGINE = ReplacingMergeTree ORDER BY (stream, seq)""",
        f"""CREATE TABLE IF NOT EXISTS ledger_meta (key String, value String, at_us Int64)
        ENGINE = ReplacingMergeTree ORDER BY key {dedupe}""",
        # databases created before the columns existed
        "ALTER TABLE usage_progress ADD COLUMN IF NOT EXISTS applied_us Int64 DEFAULT 0",
        "ALTER TABLE events ADD COLUMN IF NOT EXISTS corrects UInt64 DEFAULT 0",
        "ALTER TABLE events ADD COLUMN IF NOT EXISTS correction String DEFAULT ''",
        "ALTER TABLE kept_events ADD COLUMN IF NOT EXISTS correction String DEFAULT ''",
        "ALTER TABLE ledger_chain ADD COLUMN IF NOT EXISTS format UInt8 DEFAULT 1",
        "ALTER TABLE events ADD INDEX IF NOT EXISTS events_id id TYPE bloom_filter GRANULARITY 4",
    ]


def create(conn: Connection, window: int, retention_seconds: int | None) -> None:
    for sql in statements(window, retention_seconds):
        conn.command(sql)
    set_retention(conn, retention_seconds)


def raw_ttl(retention_seconds: int | None) -> str | None:
    """The TTL expression of the raw table for a retention (None: no TTL)."""
    if retention_seconds is None:
        return None
    return f"toDateTime(intDiv(greatest(received_us, time_us), 1000000)) + toIntervalSecond({retention_seconds})"


def set_retention(conn: Connection, retention_seconds: int | None) -> None:
    """Give an existing raw table the TTL of the setting when it has another one (or none): a
    changed ``retention.raw_events`` applies at the next start (ClickHouse then recomputes the
    TTL of existing parts, once)."""
    rows = conn.rows(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = 'events'"
    )
    current = _ttl_seconds(str(rows[0][0])) if rows else None
    if current == retention_seconds and (current is None or "greatest" in str(rows[0][0])):
        return  # a TTL after the receipt alone (before corrections were kept) is set again
    if retention_seconds is None:
        conn.command("ALTER TABLE events REMOVE TTL")
    else:
        conn.command(f"ALTER TABLE events MODIFY TTL {raw_ttl(retention_seconds)}")


def _ttl_seconds(create_query: str) -> int | None:
    """The retention a raw table's TTL clause states (None: no TTL)."""
    found = re.search(r"\bTTL\b.*?toIntervalSecond\((\d+)\)", create_query)
    return None if found is None else int(found.group(1))
