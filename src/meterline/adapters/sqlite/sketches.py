"""APPROX_UNIQUE_COUNT in SQLite: one HyperLogLog sketch (``domain.meters.sketch``) per meter,
bucket size, subject, bucket and group value in ``sketches``, kept like ``uniques``.

Writing merges a fold's values into the stored sketch of each bucket (read, add, write, in the
writer's transaction with its offset). A sketch merge is idempotent, so writing the same values
twice changes nothing; the offset moving in the same transaction is what applies each ledger
entry once. A correction recomputes its hours from the ledger (the sketch rows of those hours
are deleted and folded again, ``recompute.py``); an erasure merges the subject's sketches into
the pseudonym's. The stored bytes are canonical, so ``rebuild --check`` compares them as rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from meterline.domain.meters.fold import Unique
from meterline.domain.meters.sketch import Sketch

_KEY = "meter = ? AND level = ? AND subject = ? AND bucket = ? AND group_key = ?"


def write_sketches(conn: sqlite3.Connection, table: str, values: Iterable[Unique]) -> None:
    """Add ``values`` (as ``Fold.sketched`` holds them) to the stored sketches of ``table``."""
    grouped: dict[tuple[int, int, str, int, str], list[str]] = {}
    for meter, level, subject, bucket, group_key, value in values:
        grouped.setdefault((meter, level, subject, bucket, group_key), []).append(value)
    for key, added in grouped.items():
        sketch = _stored(conn, table, key)
        for value in added:
            sketch.add(value)
        conn.execute(f"INSERT OR REPLACE INTO {table} VALUES (?,?,?,?,?,?)", (*key, sketch.to_bytes()))


def move_sketches(conn: sqlite3.Connection, where: str, params: tuple[Any, ...], new: str) -> int:
    """Merge the sketches ``where`` selects into subject ``new``'s of the same buckets (an
    erasure's pseudonym) and delete them; returns how many moved."""
    rows = conn.execute(f"SELECT meter, level, bucket, group_key, sketch FROM sketches {where}", params).fetchall()
    conn.execute(f"DELETE FROM sketches {where}", params)
    for meter, level, bucket, group_key, blob in rows:
        key = (meter, level, new, bucket, group_key)
        sketch = _stored(conn, "sketches", key)
        sketch.merge(Sketch.from_bytes(blob))
        conn.execute("INSERT OR REPLACE INTO sketches VALUES (?,?,?,?,?,?)", (*key, sketch.to_bytes()))
    return len(rows)


def _stored(conn: sqlite3.Connection, table: str, key: tuple[int, int, str, int, str]) -> Sketch:
    row = conn.execute(f"SELECT sketch FROM {table} WHERE {_KEY}", key).fetchone()
    return Sketch() if row is None else Sketch.from_bytes(row[0])
