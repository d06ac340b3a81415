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
from decimal import Decimal
from typing import NamedTuple

from meterline.domain.decimals import add
from meterline.domain.events.model import Event, Rejection
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import event_data
from meterline.domain.meters.model import EVERY_TYPE, Aggregation, Meter, counts_type, type_key
from meterline.ports.reconciliation import BilledWindow, Change

_CHUNK = 500
_COLUMNS = "e.seq, e.source, e.type, e.subject, e.time_us, e.raw, e.received_us, coalesce(c.action, '')"


class _Version(NamedTuple):
    seq: int
    source: str
    type: str
    subject: str
    time_us: int
    raw: bytes
    received_us: int
    action: str


def billed_changes(
    conn: sqlite3.Connection, namespace: str, meters: list[Meter], windows: list[BilledWindow], through: int
) -> list[dict[str, Change]]:
    out: list[dict[str, Change]] = [{} for _ in windows]
    if not windows or not meters:
        return out
    since = min(w.snapshot_us for w in windows)
    start, end = min(w.start_us for w in windows), max(w.end_us for w in windows)
    chains = _chains(conn, namespace, {type_key(m.spec) for m in meters}, (start, end, since, through))
    compiled = [CompiledMeter(m) for m in meters]
    for i, window in enumerate(windows):
        subjects = set(window.subjects)
        for chain in chains:
            if chain[-1].received_us <= window.snapshot_us:
                continue  # nothing of this key arrived after the window was billed
            then = _at(chain, window.snapshot_us)
            now = chain[-1]
            if not (_inside(then, window, subjects) or _inside(now, window, subjects)):
                continue
            for meter in compiled:
                _note(out[i], meter, namespace, then, now)
    return out


def _note(into: dict[str, Change], meter: CompiledMeter, namespace: str, then: _Version | None, now: _Version) -> None:
    before, after = _quantity(meter, namespace, then), _quantity(meter, namespace, now)
    if before is None and after is None:
        return
    change = into.setdefault(meter.meter.slug, Change())
    change.entries += 1
    if now.action == "void":
        change.voided = add(change.voided, -(before or Decimal(0)))
    else:
        change.late = add(change.late, (after or Decimal(0)) - (before or Decimal(0)))


def _quantity(meter: CompiledMeter, namespace: str, v: _Version | None) -> Decimal | None:
    """What version ``v`` adds to the meter's quantity (None: nothing, it does not read it)."""
    if v is None or v.action == "void" or not counts_type(meter.meter.spec, v.type):
        return None
    event = Event(namespace, v.source, "", v.type, v.subject, v.time_us, event_data(v.raw), v.raw, b"")
    if not meter.applies(event):
        return None
    reading = meter.read(event)
    if isinstance(reading, Rejection):
        return None
    if meter.aggregation is Aggregation.COUNT:
        return Decimal(1)
    if meter.aggregation is Aggregation.SUM and isinstance(reading.value, Decimal):
        return reading.value
    return Decimal(0)  # read, but not additive: counted in ``entries`` only


def _inside(v: _Version | None, w: BilledWindow, subjects: set[str]) -> bool:
    return v is not None and v.action != "void" and v.subject in subjects and w.start_us <= v.time_us < w.end_us


def _at(chain: list[_Version], at_us: int) -> _Version | None:
    found = None
    for v in chain:
        if v.received_us <= at_us:
            found = v
    return found


def _chains(
    conn: sqlite3.Connection, namespace: str, types: set[str], span: tuple[int, int, int, int]
) -> list[list[_Version]]:
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
    chains: dict[int, list[_Version]] = {}
    for part in _chunks(sorted(keys)):
        marks = ",".join("?" * len(part))
        found = conn.execute(
            f"SELECT coalesce(c.original, e.seq), {_COLUMNS} FROM events e LEFT JOIN corrections c ON c.seq = e.seq"
            f" WHERE e.seq <= ? AND (e.seq IN ({marks}) OR e.seq IN"
            f" (SELECT seq FROM corrections WHERE original IN ({marks})))",
            (through, *part, *part),
        )
        for key, *row in found:
            chains.setdefault(key, []).append(_Version(*row))
    return [sorted(chain) for chain in chains.values()]


def _chunks(items: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]
