"""Corrected buckets recomputed from the ledger (the aggregator, backfills and ``rebuild``).

A correction is never folded as a delta: MIN, MAX, LATEST and UNIQUE_COUNT cannot take a value
back out of a bucket. Instead, after a chunk's deltas are written, every hour that any version
of a corrected key falls in (its original, each amend, for every meter of that version's
namespace and type, and for a built-in meter of every type, per subject) is deleted from the
rollups — all bucket sizes, which all lie inside the hour — and folded again from the ledger
entries that count (the summary rows that hold the hour are then folded again from the rollups:
``summaries.refresh``):

- entries the meter has applied: ``seq <= live offset`` outside a backfill still to do
  (``backfill_done < seq <= backfill_to``);
- not a void, and not superseded by a later entry of the same key's chain that the meter has
  applied.

So a recomputed hour is exactly what a replay of the ledger prefix gives, whichever chunk or
path (live, backfill, ``rebuild``) reaches it, and ``rebuild --check`` stays identical. A
backfill that folds an original the live path already saw corrected is made exact the same way:
its chunk's originals that have corrections are recomputed too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from meterline.adapters.sqlite.gauges import Late
from meterline.adapters.sqlite.ingest import live_meters
from meterline.adapters.sqlite.replay import ENTRIES, stored_offset, write_replay
from meterline.adapters.sqlite.summaries import refresh
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import LedgerEntry, Replay
from meterline.domain.meters.model import EVERY_TYPE, is_builtin, type_key

HOUR_US = 3600 * 1_000_000
Applied = Callable[[int, int], bool]
"""(meter key, seq) -> whether the meter's rollups reflect that ledger entry."""
Hour = tuple[str, str, str, int]
"""(namespace, type, subject, hour start in µs)."""


def applied_in_store(conn: sqlite3.Connection, live_offset: int) -> Applied:
    """What the stored rollups reflect once the live offset is ``live_offset`` and every
    meter's backfill is where the ``meters`` table says."""
    todo = {
        key: (done, to)
        for key, done, to in conn.execute("SELECT key, backfill_done, backfill_to FROM meters WHERE deleted_us IS NULL")
    }

    def applied(meter: int, seq: int) -> bool:
        if seq > live_offset:
            return False
        done, to = todo.get(meter, (0, 0))
        return not done < seq <= to

    return applied


def everything_to(head: int) -> Applied:
    """A replay from 0 to ``head`` of every meter (``rebuild``)."""
    return lambda _meter, seq: seq <= head


def recompute(
    conn: sqlite3.Connection,
    replay: Replay,
    meters: list[CompiledMeter],
    roots: Iterable[int],
    applied: Applied,
    prefix: str = "",
    *,
    late: Iterable[Late] = (),
) -> set[tuple[int, str]]:
    """Recompute the hours of the chains of ``roots`` for ``meters`` (see the module doc), and
    the ``late`` gauge hours for their meter alone (``gauges.write_gauges``); returns the
    (meter key, subject) pairs whose rollups were recomputed."""
    hours: dict[Hour, set[int] | None] = dict.fromkeys(_hours(conn, set(roots)))
    by_key = {m.meter.key: m for m in meters}
    for key, subject, hour in late:
        gauge = by_key[key].meter
        at = (gauge.namespace, gauge.spec.event_type, subject, hour * 1_000_000)
        if at in hours and hours[at] is None:
            continue  # recomputed for every meter already
        hours[at] = (hours.get(at) or set()) | {key}
    if any(is_builtin(m.meter.spec) for m in meters):  # they count the hour's events of every type
        hours.update(dict.fromkeys({(ns, EVERY_TYPE, subject, start) for ns, _, subject, start in list(hours)}))
    return _refold(conn, replay, meters, hours, applied, prefix)


def refold_builtins(conn: sqlite3.Connection, namespace: str, subject: str, starts_us: Iterable[int], cap: int) -> None:
    """Fold the hours ``starts_us`` of ``subject`` again from the ledger for the namespace's
    built-in meters: after an erasure rewrote their events (``adapters.sqlite.erasure``), whose
    size, unlike any reading of ``data``, the rewrite changes."""
    built = [CompiledMeter(m) for m in live_meters(conn) if m.namespace == namespace and is_builtin(m.spec)]
    if not built:
        return
    hours: dict[Hour, set[int] | None] = dict.fromkeys((namespace, EVERY_TYPE, subject, s) for s in set(starts_us))
    applied = applied_in_store(conn, stored_offset(conn))
    _refold(conn, Replay(cap, {}, {}), built, hours, applied, "")


def _refold(
    conn: sqlite3.Connection,
    replay: Replay,
    meters: list[CompiledMeter],
    hours: dict[Hour, set[int] | None],
    applied: Applied,
    prefix: str,
) -> set[tuple[int, str]]:
    touched: set[tuple[int, str]] = set()
    for (ns, type_, subject, start), only in sorted(hours.items(), key=lambda item: item[0]):
        wanted = [
            m
            for m in meters
            if m.meter.namespace == ns and type_key(m.meter.spec) == type_ and (only is None or m.meter.key in only)
        ]
        if not wanted:
            continue
        of_type = "?2 = ?2" if type_ == EVERY_TYPE else "e.type = ?2"
        entries = conn.execute(
            f"{ENTRIES} WHERE e.namespace = ?1 AND {of_type} AND e.time_us >= ?3 AND e.time_us < ?4"
            " AND e.subject = ?5 ORDER BY e.seq",
            (ns, type_, start, start + HOUR_US, subject),
        ).fetchall()
        chains = _chains(conn, {row[9] or row[0] for row in entries})
        for meter in wanted:
            key = meter.meter.key
            counted = [_as_event(row) for row in entries if _counts(row, key, chains, applied)]
            _clear(conn, prefix, key, subject, start)
            again = Replay(replay.cap, replay.group_values, replay.subjects)
            again.apply([meter], counted)
            # the hour was cleared: its gauge buckets are written whole, nothing joins (no late hours)
            write_replay(conn, again, prefix, summaries=False)  # the hour was replaced, not added to:
            refresh(conn, prefix, key, meter.aggregation, subject, start // 1_000_000)  # fold its summaries again
            touched.add((key, subject))
    return touched


def roots_in(conn: sqlite3.Connection, start: int, end: int) -> set[int]:
    """Originals in ``(start, end]`` that have corrections (a backfill's chunk)."""
    rows = conn.execute("SELECT DISTINCT original FROM corrections WHERE original > ? AND original <= ?", (start, end))
    return {int(r[0]) for r in rows}


def _hours(conn: sqlite3.Connection, roots: set[int]) -> set[Hour]:
    hours: set[Hour] = set()
    for root in roots:
        rows = conn.execute(
            "SELECT namespace, type, subject, time_us FROM events"
            " WHERE seq = ? OR seq IN (SELECT seq FROM corrections WHERE original = ?)",
            (root, root),
        )
        hours.update((ns, t, s, time_us - time_us % HOUR_US) for ns, t, s, time_us in rows)
    return hours


def _chains(conn: sqlite3.Connection, roots: set[int]) -> dict[int, list[tuple[int, bool]]]:
    """Per original: its corrections (seq, is a void) in ledger order."""
    out: dict[int, list[tuple[int, bool]]] = {}
    for root in roots:
        rows = conn.execute("SELECT seq, action FROM corrections WHERE original = ? ORDER BY seq", (root,))
        found = [(int(seq), action == "void") for seq, action in rows]
        if found:
            out[root] = found
    return out


def _counts(row: tuple[Any, ...], meter: int, chains: dict[int, list[tuple[int, bool]]], applied: Applied) -> bool:
    seq: int = row[0]
    if not applied(meter, seq):
        return False
    root: int = row[9] or seq
    chain = chains.get(root, [])
    if any(c == seq and void for c, void in chain):
        return False
    return not any(c > seq and applied(meter, c) for c, _ in chain)


def _as_event(row: tuple[Any, ...]) -> LedgerEntry:
    return LedgerEntry(*row[:8])  # counted as an ordinary event: its chain is resolved here


def _clear(conn: sqlite3.Connection, prefix: str, meter: int, subject: str, start_us: int) -> None:
    first, end = start_us // 1_000_000, (start_us + HOUR_US) // 1_000_000
    for table in ("rollups", "uniques", "sketches"):
        conn.execute(
            f"DELETE FROM {prefix}{table} WHERE meter = ? AND subject = ? AND bucket >= ? AND bucket < ?",
            (meter, subject, first, end),
        )
