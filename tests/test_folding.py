"""The aggregator's SQL fold (``adapters/sqlite/folding.py``) on a real SQLite file: the rollup
and summary rows it writes are exactly those of the Python fold (every bucket size merged in
Python, one upsert per row), for every aggregation, for values SQLite cannot merge exactly
(fractions, totals near 2**62: those stay in Python), for times before 1970 and across month
ends, and when merged into rows already stored."""

from __future__ import annotations

import random
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from meterline.adapters.sqlite.folding import staged_rows
from meterline.adapters.sqlite.rollups import row_of, upsert, write_fold
from meterline.adapters.sqlite.schema import connect, create_schema
from meterline.adapters.sqlite.summaries import summary_states
from meterline.domain.decimals import STORED_INT_LIMIT
from meterline.domain.meters.evaluate import Reading
from meterline.domain.meters.fold import Fold
from meterline.domain.meters.model import Aggregation

FOLDED = (
    Aggregation.COUNT,
    Aggregation.SUM,
    Aggregation.AVG,
    Aggregation.MIN,
    Aggregation.MAX,
    Aggregation.LATEST,
)
# 2026-01-31 23:50 UTC: the chunk's buckets cross a day and a month end
T0 = 1_769_903_400


def open_store(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    create_schema(conn)
    return conn


def readings(aggregation: Aggregation, values: list[Decimal], seed: int) -> list[tuple[Reading, str, int, int]]:
    rng = random.Random(seed)
    out = []
    for seq, value in enumerate(values, start=1):
        meter = 1 + seq % 2
        group = f'["{"ab"[seq % 2]}"]'
        v = None if aggregation is Aggregation.COUNT else value
        time_us = (T0 + rng.randrange(-1800, 1800)) * 1_000_000 + rng.randrange(1_000_000)
        if seq % 7 == 0:
            time_us = -(rng.randrange(1, 10**9)) * 1_000_000  # before 1970
        out.append((Reading(meter, v, group, ("ab"[seq % 2],)), f"s{rng.randrange(5)}", time_us, seq))
    return out


def fold_of(aggregation: Aggregation, chunk: list[tuple[Reading, str, int, int]]) -> Fold:
    fold = Fold()
    for reading, subject, time_us, seq in chunk:
        fold.add(aggregation, reading, subject, time_us, seq)
    return fold


def write_in_python(conn: sqlite3.Connection, fold: Fold) -> None:
    """The Python fold: every bucket size merged in Python, one upsert per row."""
    levels = fold.levels()
    for table, deltas in (("rollups", levels), ("summaries", summary_states(levels))):
        for aggregation, states in deltas.items():
            conn.executemany(upsert(table, aggregation), [row_of(aggregation, k, s) for k, s in states.items()])


def rows(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: conn.execute(f"SELECT * FROM {table} ORDER BY meter, level, subject, bucket, group_key").fetchall()
        for table in ("rollups", "summaries")
    }


def _small(rng: random.Random, n: int) -> list[Decimal]:
    return [Decimal(rng.randrange(-50, 1000)) for _ in range(n)]


def _beyond(rng: random.Random, n: int) -> list[Decimal]:
    return [Decimal(rng.randrange(100)) for _ in range(n - 1)] + [Decimal(STORED_INT_LIMIT) * 3]


CASES = {
    "small whole numbers": lambda rng, n, chunk: _small(rng, n),
    "fractions": lambda rng, n, chunk: [Decimal(rng.randrange(-500, 5000)) / 100 for _ in range(n)],
    "wholes written as fractions": lambda rng, n, chunk: [Decimal(f"{rng.randrange(100)}.0") for _ in range(n)],
    "totals near 2**62": lambda rng, n, chunk: [
        Decimal(STORED_INT_LIMIT // 64 + rng.randrange(1000)) for _ in range(n)
    ],
    "one value beyond 2**62": lambda rng, n, chunk: _beyond(rng, n),
    # stored totals in text form first, then whole numbers merged into them in SQL
    "small after beyond 2**62": lambda rng, n, chunk: _beyond(rng, n) if chunk == 0 else _small(rng, n),
}


@pytest.mark.parametrize("aggregation", FOLDED, ids=lambda a: a.value)
@pytest.mark.parametrize("case", list(CASES))
def test_the_sql_fold_writes_the_rows_of_the_python_fold(tmp_path: Path, aggregation: Aggregation, case: str) -> None:
    rng = random.Random(len(case))
    chunks = [readings(aggregation, CASES[case](rng, 120, seed), seed) for seed in range(3)]
    in_sql, in_python = open_store(tmp_path / "sql.db"), open_store(tmp_path / "python.db")
    for chunk in chunks:  # later chunks merge into the rows the earlier ones stored
        for conn in (in_sql, in_python):
            conn.execute("BEGIN")
        write_fold(in_sql, fold_of(aggregation, chunk))
        write_in_python(in_python, fold_of(aggregation, chunk))
        for conn in (in_sql, in_python):
            conn.execute("COMMIT")
    expected = rows(in_python)
    assert expected["rollups"] and expected["summaries"]
    assert rows(in_sql) == expected


def test_only_exactly_mergeable_states_are_staged() -> None:
    def staged(aggregation: Aggregation, values: list[Decimal]) -> bool:
        fold = fold_of(aggregation, readings(aggregation, values, 0))
        return staged_rows(aggregation, fold.minutes[aggregation]) is not None

    assert staged(Aggregation.COUNT, [Decimal("0.5")] * 10)
    assert staged(Aggregation.SUM, [Decimal(5), Decimal("5.0"), Decimal(-3)])
    assert not staged(Aggregation.SUM, [Decimal(5), Decimal("0.5")])
    assert not staged(Aggregation.SUM, [Decimal(STORED_INT_LIMIT // 2)] * 2)  # the sum could reach 2**62
    assert not staged(Aggregation.MIN, [Decimal(STORED_INT_LIMIT)])
    assert not staged(Aggregation.LATEST, [Decimal(1)])
