"""The usage store's side of a scale-mode erasure on ClickHouse (``ports.erasure.ErasableStore``).

The subject is in the sorting key of ``events``, ``usage_rollups``, ``usage_uniques``,
``usage_sketches`` and ``usage_gauges`` (and a value of ``usage_dims``), which ClickHouse
cannot ``UPDATE``; so an erasure inserts, then deletes:

1. ``copy``: first, for the hash chain, each rewritten row's marker in ``ledger_erased`` (the
   content digest of its erased form: ``verify`` accepts either the original or that form for
   it, and both while they stand side by side; docs/integrity.md, "Erased rows"); then the
   erased entries into ``events`` (those not there yet) and into ``kept_events`` (those a
   corrected hour keeps there, :mod:`.kept`), and the subject's usage
   states moved to the pseudonym — rollup states merged per key (sum, min, max, latest as the
   table merges them), UNIQUE_COUNT values, sketch registers (``maxMap``), gauge states row by
   row, the meters' subject values — each table under a token of the erasure (a repeat after a
   crash inserts nothing twice);
2. ``drop``: the original entries (in ``events`` and ``kept_events``) and the subject's usage
   rows deleted, and ``usage_corrections``'s subject columns updated to the pseudonym (``kept_hours``' rows
   inserted under it, then deleted), as mutations with
   ``mutations_sync = 2`` (done when the call returns: the parts that held the rows are
   outdated, and ClickHouse's cleanup removes them from disk after ``old_parts_lifetime``).

A mutation's text is stored on disk (``mutation_<n>.txt``) for as long as ClickHouse keeps the
mutation's record: it never names the subject. The subject and the entries' log places are
put in a ``Memory`` table of the erasure (RAM only, dropped at the end) which the mutations
read (``subject IN (SELECT subject FROM ...)``). Every other statement passes the subject as a
bind parameter.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.kept import raw_union
from meterline.adapters.clickhouse.schema import DIMS, ERASED, EVENTS, GAUGES, ROLLUPS, SKETCHES, UNIQUES
from meterline.domain.erasure import ErasureRecord
from meterline.domain.integrity.batches import entry_digest
from meterline.ports.erasure import ErasedEntry, StoredVersion

SYNC = "SETTINGS mutations_sync = 2"
USAGE = ("usage_rollups", "usage_uniques", "usage_sketches", "usage_gauges")
_MOVED = {
    "usage_rollups": (
        ROLLUPS,
        "SELECT meter, level, {a:String}, bucket, group_key, sum(count), sum(total), min(low), max(high), max(latest)"
        " FROM usage_rollups WHERE has({m:Array(UInt64)}, meter) AND subject = {s:String}"
        " GROUP BY meter, level, bucket, group_key ORDER BY meter, level, bucket, group_key",
    ),
    "usage_uniques": (
        UNIQUES,
        "SELECT DISTINCT meter, level, {a:String}, bucket, group_key, value FROM usage_uniques"
        " WHERE has({m:Array(UInt64)}, meter) AND subject = {s:String} ORDER BY ALL",
    ),
    "usage_sketches": (
        SKETCHES,
        "SELECT meter, level, {a:String}, bucket, group_key, maxMap(registers) FROM usage_sketches"
        " WHERE has({m:Array(UInt64)}, meter) AND subject = {s:String}"
        " GROUP BY meter, level, bucket, group_key ORDER BY meter, level, bucket, group_key",
    ),
    "usage_gauges": (
        GAUGES,
        "SELECT meter, level, {a:String}, bucket, group_key, count, area, first_at, last_at FROM usage_gauges"
        " WHERE has({m:Array(UInt64)}, meter) AND subject = {s:String} ORDER BY ALL",
    ),
    "usage_dims": (
        DIMS,
        "SELECT DISTINCT meter, dim, {a:String}, is_subject FROM usage_dims"
        " WHERE has({m:Array(UInt64)}, meter) AND is_subject = 1 AND value = {s:String} ORDER BY ALL",
    ),
}
_VERSION = "stream, seq, namespace, source, id, type, subject, time_us, received_us, raw, corrects"


class ClickHouseErasure:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def versions(self, namespace: str, subject: str) -> list[StoredVersion]:
        where = "namespace = {ns:String} AND subject = {s:String} AND source != ''"
        sql = f"SELECT DISTINCT {_VERSION} FROM {raw_union(_VERSION, where)}"
        found = {(r[0], int(r[1])): r for r in self._conn.rows(sql, {"ns": namespace, "s": subject})}
        while True:  # every other version of their keys: corrections chain within a stream
            wanted: dict[str, set[int]] = {}
            for stream, seq, *_, corrects in found.values():
                wanted.setdefault(stream, set()).update({int(seq), int(corrects)} - {0})
            more = {}
            for stream, seqs in wanted.items():
                where = (
                    "namespace = {ns:String} AND stream = {st:String}"
                    " AND source != '' AND (has({q:Array(UInt64)}, seq) OR has({q:Array(UInt64)}, corrects))"
                )
                sql = f"SELECT DISTINCT {_VERSION} FROM {raw_union(_VERSION, where)}"
                for r in self._conn.rows(sql, {"ns": namespace, "st": stream, "q": sorted(seqs)}):
                    if (r[0], int(r[1])) not in found:
                        more[(r[0], int(r[1]))] = r
            if not more:
                break
            found |= more
        return [_version(r) for _, r in sorted(found.items())]

    def has_usage(self, meters: Sequence[int], subject: str) -> bool:
        for table in USAGE:
            sql = f"SELECT 1 FROM {table} WHERE has({{m:Array(UInt64)}}, meter) AND subject = {{s:String}} LIMIT 1"
            if self._conn.rows(sql, {"m": sorted(meters), "s": subject}):
                return True
        return False

    def copy(self, erasure: ErasureRecord, entries: Sequence[ErasedEntry], meters: Sequence[int], subject: str) -> int:
        markers = [(e.stream, e.seq, erased_digest(e).hex(), str(erasure.id), erasure.erased_us) for e in entries]
        self._conn.insert("ledger_erased", ERASED, markers, f"erasure:{erasure.id}:ledger_erased:{len(markers)}")
        copied = self._copy_events(erasure.id, entries)
        params = {"m": sorted(meters), "s": subject, "a": erasure.pseudonym}
        for table, (columns, sql) in _MOVED.items():
            rows = self._conn.rows(sql, params)
            self._conn.insert(table, columns, rows, f"erasure:{erasure.id}:{table}")
            copied += len(rows)
        return copied

    def drop(
        self, namespace: str, entries: Sequence[ErasedEntry], meters: Sequence[int], subject: str, alias: str
    ) -> None:
        keys = ", ".join(str(int(m)) for m in sorted(meters)) or "0"
        with self._scratch(subject, entries) as (who, where):
            for table in ("events", "kept_events") if entries else ():
                self._conn.command(
                    f"ALTER TABLE {table} DELETE WHERE source != ''"
                    f" AND (stream, seq) IN (SELECT stream, seq FROM {where}) {SYNC}"
                )
            for table in USAGE:
                self._conn.command(
                    f"ALTER TABLE {table} DELETE WHERE has([{keys}], meter) AND subject IN (SELECT subject FROM {who})"
                    f" {SYNC}"
                )
            self._conn.command(
                f"ALTER TABLE usage_dims DELETE WHERE has([{keys}], meter) AND is_subject = 1"
                f" AND value IN (SELECT subject FROM {who}) {SYNC}"
            )
            mine = f"IN (SELECT subject FROM {who})"
            self._conn.command(
                f"ALTER TABLE usage_corrections UPDATE subject = if(subject {mine}, {{a:String}}, subject),"
                f" was_subject = if(was_subject {mine}, {{a:String}}, was_subject)"
                f" WHERE namespace = {{ns:String}} AND (subject {mine} OR was_subject {mine}) {SYNC}",
                {"a": alias, "ns": namespace},
            )
            kept = f"namespace = {{ns:String}} AND subject {mine}"  # subject is in the key: insert, then delete
            self._conn.command(
                f"INSERT INTO kept_hours SELECT namespace, {{a:String}}, hour_us FROM kept_hours WHERE {kept}",
                {"a": alias, "ns": namespace},
            )
            self._conn.command(f"ALTER TABLE kept_hours DELETE WHERE {kept} {SYNC}", {"ns": namespace})

    def _copy_events(self, erasure: int, entries: Sequence[ErasedEntry]) -> int:
        """The erased entries the raw table lacks, and those a corrected hour keeps
        (``kept_events``, :mod:`.kept`) in their erased form (a repeat after a crash adds none twice)."""
        if not entries:
            return 0
        copied = 0
        for table, wanted in (("events", None), ("kept_events", self._places(entries, "kept_events", "!="))):
            there = self._places(entries, table, "=")
            rows = [_raw_row(e) for e in entries if (e.stream, e.seq) not in there]
            rows = [r for r in rows if wanted is None or (r[7], r[8]) in wanted]
            places = hashlib.sha256(repr(sorted((r[7], r[8]) for r in rows)).encode()).hexdigest()[:16]
            self._conn.insert(table, EVENTS, rows, f"erasure:{erasure}:{table}:{places}")
            copied += len(rows)
        return copied

    def _places(self, entries: Sequence[ErasedEntry], table: str, erased: str) -> set[tuple[str, int]]:
        """The places of ``entries`` that ``table`` holds as erased (``erased`` ``=``) or
        original (``!=``) rows."""
        by_stream: dict[str, list[int]] = {}
        for e in entries:
            by_stream.setdefault(e.stream, []).append(e.seq)
        there: set[tuple[str, int]] = set()
        for stream, seqs in by_stream.items():
            sql = (
                f"SELECT DISTINCT seq FROM {table} WHERE stream = {{st:String}} AND source {erased} ''"
                " AND has({q:Array(UInt64)}, seq)"
            )
            there.update((stream, int(s)) for (s,) in self._conn.rows(sql, {"st": stream, "q": sorted(seqs)}))
        return there

    @contextmanager
    def _scratch(self, subject: str, entries: Sequence[ErasedEntry]) -> Iterator[tuple[str, str]]:
        """Two ``Memory`` tables (never on disk) the mutations read: the subject, the places."""
        run = uuid.uuid4().hex[:12]
        who, where = f"erasing_{run}_subject", f"erasing_{run}_places"
        try:
            self._conn.command(f"CREATE TABLE {who} (subject String) ENGINE = Memory")
            self._conn.command(f"CREATE TABLE {where} (stream String, seq UInt64) ENGINE = Memory")
            self._conn.insert(who, [("subject", "String")], [(subject,)], f"{who}:0")
            places = sorted({(e.stream, e.seq) for e in entries})
            self._conn.insert(where, [("stream", "String"), ("seq", "UInt64")], places, f"{where}:0")
            yield who, where
        finally:
            self._conn.command(f"DROP TABLE IF EXISTS {who} SYNC")
            self._conn.command(f"DROP TABLE IF EXISTS {where} SYNC")


def _version(r: Any) -> StoredVersion:
    stream, seq, ns, source, id_, type_, subject, time_us, received_us, raw, corrects = r
    raw_bytes = raw.encode() if isinstance(raw, str) else bytes(raw)
    return StoredVersion(
        stream, int(seq), ns, source, id_, type_, subject, int(time_us), int(received_us), raw_bytes, int(corrects)
    )


def erased_digest(e: ErasedEntry) -> bytes:
    """The chain's content digest of an erased row as ``copy`` inserts it."""
    return entry_digest(e.namespace, "", e.type, e.subject, e.time_us, e.received_us, e.raw, e.corrects)


def _raw_row(e: ErasedEntry) -> tuple[Any, ...]:
    # an erased row carries no correction record (its reason went with the subject; the link
    # keeps the original's digest and ``ledger_erased`` this form's format-1 digest)
    row = (e.namespace, "", e.type, e.subject, e.time_us, e.received_us, e.raw.decode(), e.stream, e.seq, e.corrects)
    return (*row, "")
