"""Erasure in small writer tasks: whole UTC hours of a subject at a time (``erasure.py``).

A subject's entries are erased in tasks of about ``CHUNK`` entries, one or more UTC hours
each, before the last pass, so ingest never waits for one transaction holding all of them.
Every bucket size of the rollups and distinct values lies inside one hour, so the task that
rewrites an hour's entries moves that hour's rollup rows to the pseudonym and folds the
subject's and the pseudonym's day and month summary rows again from them
(``summaries.refresh_subject``; meter-wide rows do not change): after each COMMIT the rollups are still
exactly a replay of the ledger. An hour is left to the last pass (which moves whatever remains
of the subject, as a whole) when it cannot be moved alone:

- a key of the subject has versions (corrections) in more than one hour;
- one of its entries is not aggregated yet (after the aggregator's offset);
- the subject got an entry in that hour since the erasure was prepared, or one of the hour's
  keys got a correction since then.

Until the last pass the customer maps both the subject and the pseudonym, so its usage is
whole at every moment (billing, entitlements).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from meterline.adapters.sqlite import rollups, summaries
from meterline.domain.erasure import ErasureRequest
from meterline.domain.meters.model import MeterSpec

HOUR_US = 3_600_000_000
CHUNK = 2000
"""Entries per small task (whole hours: a task may hold more when one hour has more)."""
HOUR_MOVES = 48
"""(hour, meter) pairs moved per small task at most: each costs a few statements."""
_spec = msgspec.json.Decoder(MeterSpec)


@dataclass(frozen=True, slots=True)
class Rewrite:
    """One ledger entry's erased form, with the digests the chain needs."""

    seq: int
    source: str
    id: str
    subject: str
    digest: bytes
    raw: bytes
    kept: bytes
    content: bytes
    key_hash: int
    time_us: int
    correction: bytes | None = None
    """A correction entry's chained audit record, reason erased (content format 2)."""


def erased(conn: sqlite3.Connection, seqs: Iterable[int]) -> set[int]:
    """Which of ``seqs`` an erasure already rewrote."""
    out: set[int] = set()
    for chunk in chunks(sorted(seqs), 500):
        marks = ",".join("?" * len(chunk))
        out.update(s for (s,) in conn.execute(f"SELECT seq FROM ledger_erased WHERE seq IN ({marks})", chunk))
    return out


def chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def hour_batches(prepared: Sequence[Rewrite], meters: int = 1) -> list[dict[int, list[Rewrite]]]:
    """The prepared entries of keys that lie in one UTC hour, by hour, in tasks of about
    ``CHUNK`` entries and ``HOUR_MOVES`` hour moves (``meters`` each); hours touched by a key
    spanning hours are left out (the last pass)."""
    per_task = max(1, HOUR_MOVES // max(1, meters))
    keys: dict[str, list[Rewrite]] = {}
    for r in prepared:
        keys.setdefault(r.id, []).append(r)
    hours: dict[int, list[Rewrite]] = {}
    blocked: set[int] = set()
    for versions in keys.values():
        touched = {v.time_us // HOUR_US for v in versions}
        if len(touched) == 1:
            hours.setdefault(touched.pop(), []).extend(versions)
        else:
            blocked |= touched
    batches: list[dict[int, list[Rewrite]]] = []
    current: dict[int, list[Rewrite]] = {}
    size = 0
    for hour in sorted(set(hours) - blocked):
        current[hour] = hours[hour]
        size += len(hours[hour])
        if size >= CHUNK or len(current) >= per_task:
            batches.append(current)
            current, size = {}, 0
    if current:
        batches.append(current)
    return batches


def ready_hours(
    conn: sqlite3.Connection, req: ErasureRequest, hours: dict[int, list[Rewrite]], requested_at: int, cut: int
) -> tuple[list[Rewrite], list[int]]:
    """The entries to erase now and their hours: those hours that can move alone (module doc)."""
    done = erased(conn, [r.seq for rs in hours.values() for r in rs])
    late, corrected = _changed_since(conn, req, requested_at)
    ready: list[Rewrite] = []
    moved: list[int] = []
    for hour, rewrites in sorted(hours.items()):
        if hour in late or any(r.seq > cut or r.seq in done for r in rewrites) or _originals(rewrites) & corrected:
            continue
        ready.extend(rewrites)
        moved.append(hour)
    return ready, moved


def _changed_since(conn: sqlite3.Connection, req: ErasureRequest, requested_at: int) -> tuple[set[int], set[int]]:
    """The hours in which the subject got entries since ``requested_at``, and the originals
    of keys corrected since then (a scan of the ledger's tail, by sequence)."""
    late = {
        t // HOUR_US
        for (t,) in conn.execute(
            "SELECT time_us FROM events WHERE seq > ? AND +namespace = ? AND subject = ?",
            (requested_at, req.namespace, req.subject),
        )
    }
    corrected = {o for (o,) in conn.execute("SELECT original FROM corrections WHERE seq > ?", (requested_at,))}
    return late, corrected


def _originals(rewrites: Sequence[Rewrite]) -> set[int]:
    first: dict[str, int] = {}
    for r in rewrites:  # a key's original is its first entry
        first[r.id] = min(r.seq, first.get(r.id, r.seq))
    return set(first.values())


def move_hours(conn: sqlite3.Connection, namespace: str, subject: str, alias: str, hours: Sequence[int]) -> int:
    """Move the subject's rollup and distinct-value rows of ``hours`` to ``alias`` for every
    meter of the namespace, then fold the day and month summaries of both again."""
    moved = 0
    for key, spec in conn.execute("SELECT key, spec FROM meters WHERE namespace = ?", (namespace,)).fetchall():
        aggregation = _spec.decode(spec).aggregation
        days: set[int] = set()
        for hour in hours:
            start = hour * 3600
            if rollups.move_subject_range(conn, key, aggregation, subject, alias, start, start + 3600):
                moved += 1
                days.add(start - start % 86400)
        for who in (subject, alias):  # meter-wide rows do not change: only whose the usage is
            summaries.refresh_subject(conn, key, aggregation, who, days)
    return moved
