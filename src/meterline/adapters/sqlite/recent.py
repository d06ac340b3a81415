"""The last committed ledger entries, in memory, with the readings ingest took from them.

The aggregator reads the ledger right behind ingest. Served from here, an entry costs no
query, no row decoding and — with the readings ingest already took for the admission rule
(``domain.meters.fold.Preread``) — no second JSON decode or meter evaluation. Only what has
COMMITTED comes in (``add``, after each COMMIT that held appends), as one contiguous run of
sequence numbers: a commit whose entries are unknown (a rolled-back task's sibling) starts a
new run. Anything older, or after a restart, is read from the ``events`` table.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from meterline.domain.meters.fold import LedgerEntry

MAX_ENTRIES = 50_000
"""Entries kept at most: about a second of heavy ingest. The aggregator reads right behind
ingest; a longer backlog is read from the table (entries kept alive cost the cyclic garbage
collector time on every full pass, so the run stays short)."""


class RecentEntries:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        self._entries: list[LedgerEntry] = []
        self._lock = threading.Lock()

    def add(self, entries: Sequence[LedgerEntry]) -> None:
        """Entries of one COMMIT, in sequence order."""
        if not entries:
            return
        with self._lock:
            held = self._entries
            if held and entries[0].seq != held[-1].seq + 1:
                held.clear()  # not contiguous: a new run
            held.extend(entries)
            if len(held) > self._max:
                del held[: len(held) - self._max]

    def read(self, after: int, limit: int) -> list[LedgerEntry] | None:
        """Up to ``limit`` entries with ``seq > after`` when this run holds ``after + 1``;
        None otherwise (read the table). Entries up to ``after`` are dropped: whoever reads
        from ``after`` has applied them (the aggregator reads from its stored offsets, and a
        backfill's offset is never past the live one)."""
        with self._lock:
            held = self._entries
            if not held or not held[0].seq <= after + 1 <= held[-1].seq:
                return None
            del held[: after + 1 - held[0].seq]
            return held[:limit]

    def forget_through(self, seq: int) -> None:
        """Drop the entries up to ``seq`` (removed from the table by retention: a reader from
        before them, such as a new meter's backfill, must find the table, not these)."""
        with self._lock:
            held = self._entries
            if held and held[0].seq <= seq:
                del held[: min(len(held), seq + 1 - held[0].seq)]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
