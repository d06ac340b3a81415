"""Corrections (void, amend) on ClickHouse: how the sink stores them and how queries stay exact.

A correction entry of the log (``ports.correction_log``) supersedes one version of its key in
the same partition. The sink workers fold no correction into the rollups
(``domain.meters.fold``: a correction entry is never counted); with the batch that holds it
they store, under the batch's tokens like everything else (so exactly once across crashes and
zombie workers):

- the entry itself in the raw ``events`` table (``corrects`` = the seq it supersedes);
  the raw events of the hours it touches were kept past the table's TTL before the entry
  reached the log (:mod:`.kept`), so the versions it names are read from both tables;
- a row in ``usage_corrections`` with the type, subject and time of the version it puts in
  (an amend) and of the version it takes out, read from the batch or the raw table.

A usage query then answers every **corrected hour** — a (subject, UTC hour) that holds a
version taken out or put in by an applied correction, for the meter's event type — from the
raw events instead of the rollups: those hours' rollup buckets (every bucket size lies inside
an hour) are left out of the rollup read, and the hours' raw events that count are folded
through the meter as the partial edge minutes are (``domain.meters.edges``). An event counts
when the workers applied it (its partition's position, less a meter's unfinished backfill),
it is no void, it is not superseded by an applied correction, and it is not a second
earlier correction of a version that was corrected again from the same version (only the
last correction of a version, in log order, counts: a node that died after the log took one
and before its journal row was stored leaves it in the log unanswered, and the retry writes
another from the same version — the one the journal holds). So every aggregation — SUM and COUNT as MIN, MAX, LATEST,
UNIQUE_COUNT and AVG — is exact for the applied prefix of every partition, whichever worker
applied what, and the rollups stay a pure fold of the log's events (``rebuild`` unchanged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.schema import CORRECTIONS
from meterline.domain.events.corrections import is_void_record
from meterline.domain.meters.fold import LedgerEntry
from meterline.domain.meters.model import EVERY_TYPE
from meterline.ports.correction_log import StoredOriginal

HOUR = 3600
HOUR_US = HOUR * 1_000_000


def correction_rows(conn: Connection, stream: str, entries: Sequence[LedgerEntry]) -> list[tuple[Any, ...]]:
    """The ``usage_corrections`` rows of a batch's correction entries (the same rows whenever
    the batch is redone: what they supersede lies before them in the stream)."""
    fixes = [e for e in entries if e.correction]
    if not fixes:
        return []
    versions = {e.seq: (e.type, e.subject, e.time_us) for e in entries}
    wanted = sorted({e.correction for e in fixes} - versions.keys())
    for table in ("events", "kept_events"):  # kept: a corrected hour's version past the raw table's TTL
        if not wanted:
            break
        sql = (
            f"SELECT DISTINCT seq, type, subject, time_us FROM {table}"
            " WHERE stream = {s:String} AND has({q:Array(UInt64)}, seq)"
        )
        for seq, type_, subject, time_us in conn.rows(sql, {"s": stream, "q": wanted}):
            versions[int(seq)] = (type_, subject, int(time_us))
        wanted = [seq for seq in wanted if seq not in versions]
    rows = []
    for e in fixes:
        was = versions.get(e.correction, ("", "", 0))
        void = int(is_void_record(e.raw))
        rows.append((e.namespace, stream, e.seq, e.correction, void, e.type, e.subject, e.time_us, *was))
    return rows


def insert_corrections(conn: Connection, rows: list[tuple[Any, ...]], token: str) -> None:
    conn.insert("usage_corrections", CORRECTIONS, rows, token)


@dataclass
class Applied:
    """The applied corrections of a namespace as a query sees them (:func:`applied`)."""

    excluded: set[tuple[str, int]] = field(default_factory=set)
    """(stream, seq) of raw rows that never count: voids, superseded versions, second corrections."""
    versions: list[tuple[str, str, int]] = field(default_factory=list)
    """(type, subject, time) of every version an effective correction took out or put in."""

    def hours(self, event_type: str | None, subjects: Iterable[str] = ()) -> set[tuple[str, int]]:
        """The corrected (subject, hour start in epoch seconds) of ``event_type`` (None: of every
        type, as a built-in meter counts) (of ``subjects`` only, if any)."""
        wanted = set(subjects)
        return {
            (subject, time_us // HOUR_US * HOUR)
            for type_, subject, time_us in self.versions
            if (event_type is None or type_ == event_type) and (not wanted or subject in wanted)
        }

    def counts(self, stream: str, seq: int) -> bool:
        return (stream, seq) not in self.excluded


def applied(conn: Connection, namespace: str, done: Mapping[str, int]) -> Applied:
    """The corrections of ``namespace`` applied up to each stream's ``done`` (see the module doc)."""
    sql = (
        "SELECT DISTINCT stream, seq, corrects, void, type, subject, time_us, was_type, was_subject, was_time_us"
        " FROM usage_corrections WHERE namespace = {ns:String} ORDER BY stream, seq"
    )
    rows = [r for r in conn.rows(sql, {"ns": namespace}) if r[1] <= done.get(r[0], 0)]
    last = {(r[0], r[2]): r[1] for r in rows}  # ordered by seq: the last correction of each version
    out = Applied()
    for stream, seq, corrects, void, type_, subject, time_us, was_type, was_subject, was_time_us in rows:
        if void or last[(stream, corrects)] != seq:
            out.excluded.add((stream, seq))  # a void is no event; an earlier correction of a version never counts
        if last[(stream, corrects)] != seq:
            continue
        out.excluded.add((stream, corrects))
        if was_type:
            out.versions.append((was_type, was_subject, int(was_time_us)))
        if not void:
            out.versions.append((type_, subject, int(time_us)))
    return out


def hour_keys(hours: Iterable[tuple[str, int]]) -> list[str]:
    """Corrected hours as ``hour|subject`` strings (what :data:`HOUR_KEY` computes per row)."""
    return sorted(f"{hour}|{subject}" for subject, hour in hours)


def hour_key(seconds: str) -> str:
    """The SQL of a row's ``hour|subject`` key from its time in epoch seconds (``seconds``)."""
    return f"concat(toString(intDiv({seconds}, {HOUR}) * {HOUR}), '|', subject)"


class ClickHouseCorrectedRanges:
    """Whether stored corrections touch a meter's usage in a range: the live usage counters
    (``services.counter_feed``) fold no correction, so such a read goes to the rollups."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def touches(self, namespace: str, event_type: str, subjects: Sequence[str], start_us: int, end_us: int) -> bool:
        """A correction took out or put in a version of ``event_type`` (``EVERY_TYPE``, empty:
        of any type, as a built-in meter counts) of one of ``subjects`` in ``[start_us, end_us)``
        (stored: applied, or being applied)."""
        now, was = ("1", "1") if event_type == EVERY_TYPE else ("type = {t:String}", "was_type = {t:String}")
        sql = (
            "SELECT count() FROM usage_corrections WHERE namespace = {ns:String} AND ("
            f"({now} AND has({{s:Array(String)}}, subject) AND time_us >= {{a:Int64}} AND time_us < {{b:Int64}})"
            f" OR ({was} AND was_type != '' AND has({{s:Array(String)}}, was_subject)"
            " AND was_time_us >= {a:Int64} AND was_time_us < {b:Int64}))"
        )
        params = {"ns": namespace, "t": event_type, "s": sorted(set(subjects)), "a": start_us, "b": end_us}
        return int(self._conn.rows(sql, params)[0][0]) > 0


class ClickHouseOriginals:
    """The originals the sink workers stored (``ports.correction_log.StoredOriginals``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def original(self, namespace: str, source: str, event_id: str) -> StoredOriginal | None:
        """Looked up in ``events`` (by its id index), then in ``kept_events``. Two originals of
        a key are received a dedupe window apart, and a raw row expires after the later of its
        time (at most ``future_skew`` past its receipt) and its receipt: the newest expires last."""
        params = {"ns": namespace, "src": source, "id": event_id}
        rows = []
        for table in ("events", "kept_events"):  # kept: a corrected hour's original past the raw table's TTL
            sql = (
                f"SELECT stream, seq, type, subject, time_us, received_us, raw FROM {table}"
                " WHERE namespace = {ns:String} AND source = {src:String} AND id = {id:String} AND corrects = 0"
                " ORDER BY received_us DESC, stream, seq DESC LIMIT 1"
            )
            rows = self._conn.rows(sql, params)
            if rows:  # an older original of the key never outlives the newest in events: see below
                break
        if not rows:
            return None
        stream, seq, type_, subject, time_us, received_us, raw = rows[0]
        return StoredOriginal(stream, int(seq), type_, subject, int(time_us), int(received_us), raw.encode())
