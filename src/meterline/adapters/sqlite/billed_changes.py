"""What ledger entries received after a billed window's snapshot changed in it
(:meth:`~meterline.ports.reconciliation.ReconciliationCounts.billed_changes`).

A key's versions form a chain (``domain.events.corrections``): the version that counted when a
window was billed is the last one received by then; the one that counts now is the last one up
to the position. Only keys with a version received after the earliest snapshot can differ, so
this reads the originals of the windows' range received since then and the corrections
received since then (the ``corrections`` table, small next to the ledger), then the whole chain
of each such key by its indexes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from meterline.domain.integrity.reconcile import BilledWindow, Change, Version
from meterline.domain.integrity.reconcile import billed_changes as changes
from meterline.domain.meters.model import EVERY_TYPE, Meter, type_key

_CHUNK = 500
_COLUMNS = "e.seq, e.source, e.type, e.subject, e.time_us, e.raw, e.received_us, coalesce(c.action, '')"


def billed_changes(
    conn: sqlite3.Connection, namespace: str, meters: list[Meter], windows: list[BilledWindow], through: int
) -> list[dict[str, Change]]:
    if not windows or not meters:
        return [{} for _ in windows]
    since = min(w.snapshot_us for w in windows)
    start, end = min(w.start_us for w in windows), max(w.end_us for w in windows)
    chains = _chains(conn, namespace, {type_key(m.spec) for m in meters}, (start, end, since, through))
    return changes(namespace, meters, windows, chains)


def _chains(
    conn: sqlite3.Connection, namespace: str, types: set[str], span: tuple[int, int, int, int]
) -> list[list[Version]]:
    start, end, since, through = span
    keys: set[int] = set()
    for t in sorted(types):  # EVERY_TYPE (a built-in meter): events of every type
        of_type = "?2 = ?2" if t == EVERY_TYPE else "type = ?2"
        rows = conn.execute(
            f"SELECT seq FROM events WHERE namespace = ?1 AND {of_type} AND time_us >= ?3 AND time_us < ?4"
            " AND received_us > ?5 AND seq <= ?6 AND seq NOT IN (SELECT seq FROM corrections)",
            (namespace, t, start, end, since, through),
        )
        keys.update(seq for (seq,) in rows)
    rows = conn.execute(
        "SELECT c.original FROM corrections c JOIN events e ON e.seq = c.seq"
        " WHERE c.namespace = ? AND c.seq <= ? AND e.received_us > ?",
        (namespace, through, since),
    )
    keys.update(original for (original,) in rows)
    chains: dict[int, list[Version]] = {}
    for part in _chunks(sorted(keys)):
        marks = ",".join("?" * len(part))
        found = conn.execute(
            f"SELECT coalesce(c.original, e.seq), {_COLUMNS} FROM events e LEFT JOIN corrections c ON c.seq = e.seq"
            f" WHERE e.seq <= ? AND (e.seq IN ({marks}) OR e.seq IN"
            f" (SELECT seq FROM corrections WHERE original IN ({marks})))",
            (through, *part, *part),
        )
        for key, *row in found:
            chains.setdefault(key, []).append(Version(*row))
    return [sorted(chain) for chain in chains.values()]


def _chunks(items: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]
