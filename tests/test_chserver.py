"""The ClickHouse stand-in of the local stack (``tests/stack/chserver.py``) takes what a
ClickHouse server takes: here, inserts larger than one client block."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from stack.launch import Stack

from meterline.adapters.clickhouse.client import Connection


@pytest.fixture
def conn(scale_stack: Stack) -> Iterator[Connection]:
    c = Connection(scale_stack.clickhouse, f"t{uuid.uuid4().hex[:12]}")
    yield c
    c.command(f"DROP DATABASE IF EXISTS `{c.database}`")
    c.close()


def test_an_insert_of_many_compressed_blocks_is_written_whole_and_deduplicated_whole(conn: Connection) -> None:
    # the client sends about 65,000 rows per block, each block an lz4 frame of its own
    conn.command(
        "CREATE TABLE t (n UInt64, s String) ENGINE = MergeTree ORDER BY n"
        " SETTINGS non_replicated_deduplication_window = 100"
    )
    rows = [(n, f"row {n}") for n in range(200_000)]
    conn.insert("t", [("n", "UInt64"), ("s", "String")], rows, "batch-1")
    assert conn.rows("SELECT count(), sum(n), max(n) FROM t") == [(200_000, sum(range(200_000)), 199_999)]
    conn.insert("t", [("n", "UInt64"), ("s", "String")], rows, "batch-1")  # the same batch again: dropped
    assert conn.rows("SELECT count() FROM t") == [(200_000,)]


def test_an_insert_select_over_several_lines_is_one_statement(conn: Connection) -> None:
    conn.command("CREATE TABLE t (n UInt64) ENGINE = MergeTree ORDER BY n")
    conn.command("INSERT INTO t\nSELECT number\nFROM numbers(10)")
    assert conn.rows("SELECT count(), sum(n) FROM t") == [(10, 45)]
