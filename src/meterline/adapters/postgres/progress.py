"""Followers' progress per stream in PostgreSQL (``ports.sink.FollowerProgress``, migration 9):
one row per (follower, stream), only ever moved forward (``GREATEST``), so two workers that
both handled a range across a rebalance can record it in either order."""

from __future__ import annotations

from meterline.adapters.postgres.database import PgDatabase


class PgProgress:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def done(self, follower: str, stream: str) -> int:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT done FROM follower_progress WHERE follower = %s AND stream = %s", (follower, stream)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def advance(self, follower: str, stream: str, end: int) -> None:
        with self._db.tx() as conn:
            conn.execute(
                "INSERT INTO follower_progress VALUES (%s, %s, %s) ON CONFLICT (follower, stream)"
                " DO UPDATE SET done = GREATEST(follower_progress.done, EXCLUDED.done)",
                (follower, stream, end),
            )
