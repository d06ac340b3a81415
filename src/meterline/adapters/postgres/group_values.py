"""The shared group-value registry in PostgreSQL (``ports.group_values``)."""

from __future__ import annotations

from collections.abc import Sequence

from meterline.adapters.postgres.database import PgDatabase
from meterline.ports.group_values import GroupValue


class PgGroupValues:
    """One transaction per claim. Each (meter, dimension) has a counter row, locked (``FOR
    UPDATE``, dimensions in a fixed order, so concurrent claims never deadlock) while its new
    values are inserted: two nodes claiming the last free place wait for each other and only
    one gets it."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def claim(self, values: Sequence[GroupValue], cap: int) -> set[GroupValue]:
        by_dim: dict[tuple[int, str], list[str]] = {}
        for meter, dim, value in values:
            wanted = by_dim.setdefault((meter, dim), [])
            if value not in wanted:
                wanted.append(value)
        admitted: set[GroupValue] = set()
        with self._db.tx() as conn:
            for (meter, dim), wanted in sorted(by_dim.items()):
                conn.execute(
                    "INSERT INTO group_value_counts (meter, dim, n) VALUES (%s, %s, 0) ON CONFLICT DO NOTHING",
                    (meter, dim),
                )
                row = conn.execute(
                    "SELECT n FROM group_value_counts WHERE meter = %s AND dim = %s FOR UPDATE", (meter, dim)
                ).fetchone()
                held = int(row[0]) if row else 0
                existing = {
                    v
                    for (v,) in conn.execute(
                        "SELECT value FROM group_values WHERE meter = %s AND dim = %s AND value = ANY(%s)",
                        (meter, dim, wanted),
                    )
                }
                fresh = [v for v in wanted if v not in existing][: max(cap - held, 0)]
                if fresh:
                    with conn.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO group_values (meter, dim, value) VALUES (%s, %s, %s)",
                            [(meter, dim, v) for v in fresh],
                        )
                    conn.execute(
                        "UPDATE group_value_counts SET n = n + %s WHERE meter = %s AND dim = %s",
                        (len(fresh), meter, dim),
                    )
                admitted.update((meter, dim, v) for v in (*existing, *fresh))
        return admitted
