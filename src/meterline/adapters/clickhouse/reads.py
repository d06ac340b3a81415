"""What API nodes of scale mode read from ClickHouse besides usage: the raw events
(``GET /api/v1/events``), the subjects and group values a meter has seen, how far the sink
workers have applied the log (the freshness of every usage answer), and a health probe.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from meterline.adapters.clickhouse.client import Connection
from meterline.domain.errors import InvalidInput, NotSupported
from meterline.domain.meters.model import Aggregation, Meter
from meterline.ports.ledger import EventFilter, StoredEvent

_MINUTE = 60
_decode_group = msgspec.json.Decoder(list[str | None])


class ClickHouseEvents:
    """The raw accepted events the sink workers wrote, newest first by receipt time."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def list(self, namespace: str, f: EventFilter, *, limit: int) -> builtins.list[StoredEvent]:
        """As the embedded ledger's list: ``subject`` and ``event_id`` match substrings,
        ``source`` and ``type`` exactly, time bounds are inclusive. Newest first by receipt,
        then log position; each event's ``cursor`` (``received~seq~stream``) is where the next
        page starts (``f.after``). ``before_seq`` needs one sequence over the whole log, which a
        partitioned log does not have."""
        if f.before_seq is not None or f.from_seq is not None:
            raise NotSupported(
                "paging through events by position needs the embedded ledger's single sequence",
                mode="scale",
            )
        where, params = ["namespace = {ns:String}", "corrects = 0"], {"ns": namespace, "limit": limit}
        if f.after is not None:
            received, seq, stream = _cursor(f.after)
            where.append("(received_us, stream, seq) < ({ar:Int64}, {as:String}, {aq:UInt64})")
            params.update({"ar": received, "as": stream, "aq": seq})
        for name, column, value in (("src", "source", f.source), ("typ", "type", f.type)):
            if value:
                where.append(f"{column} = {{{name}:String}}")
                params[name] = value
        for name, column, value in (("sub", "subject", f.subject), ("eid", "id", f.event_id)):
            if value:
                where.append(f"position({column}, {{{name}:String}}) > 0")
                params[name] = value
        for name, clause, bound in (
            ("t0", "time_us >= {t0:Int64}", f.start_us),
            ("t1", "time_us <= {t1:Int64}", f.end_us),
            ("r0", "received_us >= {r0:Int64}", f.received_from_us),
            ("r1", "received_us <= {r1:Int64}", f.received_to_us),
        ):
            if bound is not None:
                where.append(clause)
                params[name] = bound
        sql = (
            f"SELECT namespace, raw, received_us, stream, seq FROM events WHERE {' AND '.join(where)}"
            " ORDER BY received_us DESC, stream DESC, seq DESC LIMIT {limit:UInt32}"
        )
        return [
            StoredEvent(0, ns, raw.encode(), int(received), f"{int(received)}~{int(seq)}~{stream}")
            for ns, raw, received, stream, seq in self._conn.rows(sql, params)
        ]


class ClickHouseMeterValues:
    """:class:`~meterline.ports.meter_values.MeterValues` from the rollups' minute buckets (a
    minute counts when it overlaps the range) and, for all time, from ``usage_dims``."""

    def __init__(self, conn: Connection, fresh: Callable[[], None] = lambda: None) -> None:
        self._conn = conn
        self._fresh = fresh

    def subjects(self, meter: Meter, start: int | None, end: int | None) -> builtins.list[str]:
        self._fresh()
        if start is None and end is None:
            sql = "SELECT DISTINCT value FROM usage_dims WHERE meter = {m:UInt64} AND is_subject = 1 ORDER BY value"
            return [r[0] for r in self._conn.rows(sql, {"m": meter.key})]
        where, params = _range(meter, start, end)
        rows = self._conn.rows(f"SELECT DISTINCT subject FROM {_table(meter)} WHERE {where} ORDER BY subject", params)
        return [r[0] for r in rows]

    def group_values(self, meter: Meter, dimension: str, start: int | None, end: int | None) -> builtins.list[str]:
        self._fresh()
        position = sorted(meter.spec.group_by).index(dimension)
        where, params = _range(meter, start, end)
        found = set()
        for (group_key,) in self._conn.rows(f"SELECT DISTINCT group_key FROM {_table(meter)} WHERE {where}", params):
            value = _decode_group.decode(group_key)[position]
            if value is not None:
                found.add(value)
        return sorted(found)


def _table(meter: Meter) -> str:
    if meter.spec.aggregation is Aggregation.APPROX_UNIQUE_COUNT:
        return "usage_sketches"
    if meter.spec.aggregation is Aggregation.TIME_WEIGHTED_SUM:
        return "usage_gauges"
    return "usage_uniques" if meter.spec.aggregation is Aggregation.UNIQUE_COUNT else "usage_rollups"


def _range(meter: Meter, start: int | None, end: int | None) -> tuple[str, dict[str, Any]]:
    where = "meter = {m:UInt64} AND level = {lv:UInt32}"
    params: dict[str, Any] = {"m": meter.key, "lv": _MINUTE}
    if start is not None:
        where += " AND bucket >= {lo:Int64}"
        params["lo"] = start - start % _MINUTE
    if end is not None:
        where += " AND bucket < {hi:Int64}"
        params["hi"] = end
    return where, params


@dataclass(frozen=True, slots=True)
class Applied:
    """How far the sink workers have applied the log's partitions."""

    records: int
    """Log records applied, over every partition (grows as the workers go on)."""
    as_of_us: int
    """The receipt time of the newest event applied, in the partition furthest behind by that
    measure (0 when nothing was applied yet)."""
    done: dict[int, int]
    """Per partition, the offset after the last record applied."""


class ClickHouseProgress:
    """The sink workers' progress on one topic, read from ``usage_progress``."""

    def __init__(self, conn: Connection, topic: str) -> None:
        self._conn = conn
        self._prefix = f"{topic}:"

    def applied(self) -> Applied:
        rows = self._conn.rows(
            "SELECT stream, done, applied_us FROM usage_progress FINAL WHERE startsWith(stream, {p:String})",
            {"p": self._prefix},
        )
        done = {
            int(stream[len(self._prefix) :]): int(d) for stream, d, _ in rows if stream[len(self._prefix) :].isdigit()
        }
        stamps: Sequence[int] = [int(r[2]) for r in rows if int(r[2]) > 0]
        return Applied(sum(done.values()), min(stamps, default=0), done)

    def backfilling(self) -> dict[int, int]:
        """Per meter created after its topic's partitions had entries: how many positions of
        them its backfills still have to fold (meters with nothing left are absent)."""
        rows = self._conn.rows(
            "SELECT stream, done, to FROM usage_progress FINAL"
            " WHERE startsWith(stream, 'backfill:') AND position(stream, {p:String}) > 0 AND done < to",
            {"p": f":{self._prefix}"},
        )
        left: dict[int, int] = {}
        for stream, done, to in rows:
            meter, _, partition = stream[len("backfill:") :].partition(":")
            if meter.isdigit() and partition.startswith(self._prefix):
                left[int(meter)] = left.get(int(meter), 0) + int(to) - int(done)
        return left

    def backfill_of(self, meter: int) -> tuple[int, int] | None:
        """While ``meter``'s backfill is not finished, how far it is (positions applied, of
        positions to apply, over the topic's partitions); None once it is. Not finished also
        while a partition the workers have applied has no backfill recorded for the meter yet:
        a meter created (or regrouped, which gives it a new key) a moment ago, before a worker
        noticed it."""
        rows = self._conn.rows(
            "SELECT stream, done, to FROM usage_progress FINAL WHERE position(stream, {p:String}) > 0",
            {"p": self._prefix},
        )
        own = f"backfill:{meter}:{self._prefix}"
        partitions: set[str] = set()
        recorded: set[str] = set()
        applied = to = 0
        for stream, done, end in rows:
            if stream.startswith(self._prefix) and stream[len(self._prefix) :].isdigit():
                partitions.add(stream[len(self._prefix) :])
            elif stream.startswith(own):
                recorded.add(stream[len(own) :])
                applied, to = applied + int(done), to + int(end)
        return (applied, to) if applied < to or partitions - recorded else None

    def probe(self) -> None:
        """One round trip; raises ``StorageUnavailable`` when ClickHouse does not answer."""
        self._conn.rows("SELECT 1")


def _cursor(text: str) -> tuple[int, int, str]:
    """The (received_us, seq, stream) of a cursor ``ClickHouseEvents.list`` answered."""
    received, _, rest = text.partition("~")
    seq, _, stream = rest.partition("~")
    if not (received.isascii() and received.isdigit() and seq.isascii() and seq.isdigit() and stream):
        raise InvalidInput("cursor must be a nextCursor this list answered", code="invalid_cursor")
    if len(received) > 18 or len(seq) > 18 or len(stream) > 300:
        raise InvalidInput("cursor must be a nextCursor this list answered", code="invalid_cursor")
    return int(received), int(seq), stream
