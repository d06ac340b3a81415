"""Scale mode: the ClickHouse raw table gets its TTL from ``retention.raw_events`` (docs/retention.md),
after the later of each event's time and receipt, also when the setting changes after the table
was created; rollups and the kept raw events of corrected hours get none."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from stack.launch import Stack

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.schema import create
from meterline.bootstrap import raw_events_us
from meterline.config import load_config


@pytest.fixture
def conn(scale_stack: Stack) -> Iterator[Connection]:
    name = f"ttl_{uuid.uuid4().hex}"
    c = Connection(scale_stack.clickhouse, name)
    yield c
    c.command(f"DROP DATABASE IF EXISTS `{name}`")
    c.close()


def table(conn: Connection, name: str) -> str:
    rows = conn.rows(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = {n:String}",
        {"n": name},
    )
    return str(rows[0][0])


def test_the_raw_table_follows_the_retention_setting(conn: Connection) -> None:
    overrides = {"storage": {"engine": "scale"}, "retention": {"raw_events": "30d"}, "reconcile": {"lookback": "P30D"}}
    config = load_config(None, overrides)
    seconds = raw_events_us(config)
    assert seconds == 30 * 86_400 * 10**6
    create(conn, 1000, seconds // 10**6)
    ttl = "TTL toDateTime(intDiv(greatest(received_us, time_us), 1000000)) + toIntervalSecond(2592000)"
    assert ttl in table(conn, "events")  # after the later of the event's time and its receipt
    for kept in ("usage_rollups", "kept_events", "kept_hours"):
        assert "TTL" not in table(conn, kept)
    create(conn, 1000, 7 * 86_400)  # the setting changed: the next start sets it
    assert "toIntervalSecond(604800)" in table(conn, "events")
    create(conn, 1000, None)  # "forever"
    assert "TTL" not in table(conn, "events")


def test_a_raw_table_expiring_after_the_receipt_alone_is_set_again(conn: Connection) -> None:
    """A table created when the TTL ran from the receipt only gets the TTL after the later of
    the time and the receipt at the next start, the retention unchanged: every event of an hour
    then outlives the hour's start by the retention (what keeping corrected hours relies on)."""
    create(conn, 1000, None)
    conn.command("ALTER TABLE events MODIFY TTL toDateTime(intDiv(received_us, 1000000)) + toIntervalSecond(86400)")
    assert "greatest" not in table(conn, "events")
    create(conn, 1000, 86_400)
    assert "greatest(received_us, time_us), 1000000)) + toIntervalSecond(86400)" in table(conn, "events")
