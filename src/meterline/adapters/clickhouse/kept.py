"""The raw events of corrected hours, kept past the raw table's TTL (``ports.correction_log.KeptHours``).

A usage query answers a corrected (subject, UTC hour) from its raw events (:mod:`.corrections`),
so they must outlive ``retention.raw_events``. The raw table ``events`` expires a row
``raw_events`` after the later of its event time and its receipt (:func:`.schema.raw_ttl`):
every event of an hour that starts at ``h`` stays at least until ``h + raw_events``. Before that,
the hour's events are copied into ``kept_events`` (no TTL), by this handshake:

1. an API node, holding the corrected key (``services.log_corrections``), refuses the
   correction (``event_pruned``) when an hour of the key's versions or of the new version
   starts at or before the *horizon*, ``now - raw_events`` (now: the later of the node's clock
   and ClickHouse's, whose clock the TTL follows): that hour may have lost events already;
2. inserts the hours of the version it takes out and of the one it puts in into ``kept_hours``;
3. copies those hours' rows of ``events`` that ``kept_events`` lacks into it;
4. checks 1 again: the copy ended before any of its rows could expire; else it refuses, and
   the correction never reaches the log;
5. a sink worker, after inserting a batch's raw events and before recording the batch
   applied, copies the batch's rows that lie in a kept hour into ``kept_events`` (under the
   batch's token: a redone batch copies them again, and ClickHouse drops the repeat).

An event inserted after step 3 read ``events`` is copied by 5, whose read of ``kept_hours``
follows both its own insert and step 2: ClickHouse makes an insert visible to every read that
starts after it returned (a single server; on a cluster, ``insert_quorum`` and
``select_sequential_consistency`` give the same). So every row of a kept hour is in
``kept_events`` before it can expire, whichever node or worker wrote it, and a correction the
log took was kept by 1-4 first. Reads take ``events`` and ``kept_events`` together
(:func:`raw_union`); a row in both is one row (the same place, the same content).

Without ``retention.raw_events`` the same steps run (no horizon: nothing is refused), so
turning retention on later finds the corrected hours already kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.schema import EVENTS

HOUR_US = 3_600_000_000
KEPT_HOURS = [("namespace", "String"), ("subject", "String"), ("hour_us", "Int64")]
KEPT_COLUMNS = "namespace, source, type, subject, time_us, received_us, raw, stream, seq, corrects"


def raw_union(columns: str, where: str) -> str:
    """A ``FROM`` source of the raw rows matching ``where``, from ``events`` and ``kept_events``
    (select ``DISTINCT`` from it: a kept row is usually in both)."""
    return f"(SELECT {columns} FROM events WHERE {where} UNION ALL SELECT {columns} FROM kept_events WHERE {where})"


def hour_of(time_us: int) -> int:
    return time_us // HOUR_US * HOUR_US


class ClickHouseKeptHours:
    def __init__(self, conn: Connection, retention_us: int | None, now_us: Callable[[], int]) -> None:
        self._conn = conn
        self._retention_us = retention_us
        self._now_us = now_us

    def horizon_us(self) -> int | None:
        """Hours starting at or before this may have lost raw events (None: none expire)."""
        if self._retention_us is None:
            return None
        engine = int(self._conn.rows("SELECT toUnixTimestamp64Micro(now64(6))")[0][0])
        return max(self._now_us(), engine) - self._retention_us

    def keep(self, namespace: str, places: Sequence[tuple[str, int]]) -> None:
        """Steps 2 and 3 of the module doc for the (subject, time) ``places``: the hours recorded,
        then their rows copied in one statement (those ``kept_events`` lacks: a repeat or a
        second correction of the hour copies only what came since)."""
        hours = sorted({(subject, hour_of(t)) for subject, t in places})
        self._conn.insert("kept_hours", KEPT_HOURS, [(namespace, s, h) for s, h in hours], "")  # no window: one row
        params: dict[str, Any] = {"ns": namespace}
        wanted = []
        for i, (subject, hour) in enumerate(hours):
            params[f"s{i}"], params[f"a{i}"], params[f"b{i}"] = subject, hour, hour + HOUR_US
            wanted.append(f"(subject = {{s{i}:String}} AND time_us >= {{a{i}:Int64}} AND time_us < {{b{i}:Int64}})")
        where = f"namespace = {{ns:String}} AND ({' OR '.join(wanted)})"
        self._conn.command(
            f"INSERT INTO kept_events ({KEPT_COLUMNS}) SELECT {KEPT_COLUMNS} FROM events WHERE {where}"
            f" AND (stream, seq) NOT IN (SELECT stream, seq FROM kept_events WHERE {where})"
            " SETTINGS insert_deduplicate = 0",  # never dropped as a repeat of an equal block
            params,
        )


def keep_batch(conn: Connection, rows: Sequence[Sequence[Any]], token: str) -> None:
    """Step 5 of the module doc: ``rows`` (``EVENTS`` columns, just inserted into ``events``)
    that lie in a kept hour, copied into ``kept_events``."""
    if not rows:
        return
    params = {"ns": sorted({r[0] for r in rows}), "s": sorted({r[3] for r in rows})}
    sql = (  # the table's key prefix: the batch's namespaces and subjects
        "SELECT DISTINCT namespace, subject, hour_us FROM kept_hours"
        " WHERE namespace IN {ns:Array(String)} AND subject IN {s:Array(String)}"
    )
    kept = {(ns, subject, int(hour)) for ns, subject, hour in conn.rows(sql, params)}
    if kept:
        wanted = [r for r in rows if (r[0], r[3], hour_of(int(r[4]))) in kept]
        conn.insert("kept_events", EVENTS, wanted, token)
