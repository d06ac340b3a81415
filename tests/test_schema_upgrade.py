"""A store created before the ledger's (namespace, type, time) index, the customers' ``profile``
and ``deleted_subjects`` columns and the ledger's ``chain`` and ``correction`` columns gains them
when it is opened, keeps its rows, and the partial-minute reads of meter queries go through that
index instead of scanning the ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from meterline.adapters.sqlite.meters import edge_sql
from meterline.adapters.sqlite.schema import DDL, connect, create_schema

INDEX = "CREATE INDEX IF NOT EXISTS events_by_type_time ON events (namespace, type, time_us);\n"
BY_TIME = "CREATE INDEX IF NOT EXISTS rollups_by_time ON rollups (meter, bucket, subject) WHERE level = 900;\n"
DAYS_BY_TIME = (
    "CREATE INDEX IF NOT EXISTS summaries_days_by_time ON summaries (meter, bucket, subject, cnt, total, low, high)\n"
    "    WHERE level = 86400;\n"
)
CHAIN = (
    ",\n    -- the entry's link in the hash chain (adapters.sqlite.chain, domain.integrity.chain)\n    chain BLOB,\n"
    "    -- a correction entry's audit record as the chain covers it (content format 2: JSON\n"
    "    -- [action, original, reason, actor]); NULL for an event, and for entries before format 2\n"
    "    correction BLOB\n"
)
PROFILE = (
    "deleted_us INTEGER,\n"
    "    -- OpenMeter's descriptive members (description, primaryEmail, currency, billingAddress) as JSON\n"
    "    profile BLOB,\n"
    "    -- a deleted customer's subject keys (JSON array): it is kept, its claims are released\n"
    "    deleted_subjects BLOB\n"
)


def old_store(path: Path) -> None:
    assert all(part in DDL for part in (INDEX, BY_TIME, DAYS_BY_TIME, PROFILE, CHAIN)), (
        "the schema changed: update this picture"
    )
    conn = sqlite3.connect(path)
    conn.executescript(
        DDL.replace(INDEX, "")
        .replace(BY_TIME, "")
        .replace(DAYS_BY_TIME, "")
        .replace(PROFILE, "deleted_us INTEGER\n")
        .replace(CHAIN, "\n")
    )
    conn.execute("INSERT INTO customers VALUES ('c1', 'default', 'acme', 'Acme', 'UTC', NULL, 1, 1, NULL)")
    conn.execute("INSERT INTO events VALUES (1, 'default', 's', 'e1', 'call', 'acme', 5000000, 5000000, x'00', '{}')")
    conn.commit()
    conn.close()


def test_an_existing_store_gains_the_index_and_the_column(tmp_path: Path) -> None:
    path = tmp_path / "meterline.db"
    old_store(path)
    conn = connect(path)
    create_schema(conn)
    create_schema(conn)  # opening it again changes nothing
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "events_by_type_time" in names
    assert "rollups_by_time" in names  # per_subject.by_time reads through it
    assert "summaries_days_by_time" in names  # per_subject.days_by_time reads through it
    assert conn.execute("SELECT key, profile, deleted_subjects FROM customers").fetchall() == [("acme", None, None)]
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    assert conn.execute("SELECT chain, correction FROM events").fetchall() == [(None, None)]


def test_partial_minutes_are_read_through_the_index(tmp_path: Path) -> None:
    conn = connect(tmp_path / "meterline.db")
    create_schema(conn)
    for subjects in (0, 2):
        params = ["default", "call", 0, 60_000_000, 10, *["a", "b"][:subjects]]
        plan = " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + edge_sql(subjects), params))
        assert "USING INDEX events_by_type_time" in plan or "USING COVERING INDEX events_by_type_time" in plan, plan
        assert "SCAN events" not in plan, plan
