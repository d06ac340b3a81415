"""Live usage counters in memory (``ports.live_usage``): the reference for the Redis ones."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal

from meterline.domain.decimals import EXACT
from meterline.domain.meters.minutes import buckets, cover
from meterline.ports.live_usage import Deltas

ZERO = Decimal(0)


class MemoryUsageCounters:
    def __init__(self) -> None:
        self._positions: dict[tuple[str, int], int] = {}
        self._counts: dict[tuple[int, str], dict[str, Decimal]] = {}
        self._lock = threading.Lock()

    def positions(self, stream: str, meters: Sequence[int]) -> dict[int, int | None]:
        with self._lock:
            return {m: self._positions.get((stream, m)) for m in meters}

    def held(self, streams: Sequence[str], meter: int) -> dict[str, int | None]:
        with self._lock:
            return {s: self._positions.get((s, meter)) for s in streams}

    def add(self, stream: str, moves: Mapping[int, tuple[int | None, int]], deltas: Deltas) -> bool:
        with self._lock:
            if any(self._positions.get((stream, m)) != at for m, (at, _) in moves.items()):
                return False
            for (meter, subject), minutes in deltas.items():
                if meter not in moves:
                    continue
                counts = self._counts.setdefault((meter, subject), {})
                for minute, value in minutes.items():
                    for b in buckets(minute):
                        counts[b] = EXACT.add(counts.get(b, ZERO), value)
            for m, (_, end) in moves.items():
                self._positions[(stream, m)] = end
            return True

    def total(self, meter: int, subjects: Sequence[str], start_minute: int, end_minute: int) -> Decimal:
        fields = cover(start_minute, end_minute)
        total = ZERO
        with self._lock:
            for subject in subjects:
                counts = self._counts.get((meter, subject), {})
                for f in fields:
                    total = EXACT.add(total, counts.get(f, ZERO))
        return total

    def move_subject(self, meters: Sequence[int], subject: str, alias: str) -> int:
        moved = 0
        with self._lock:
            for meter in meters:
                counts = self._counts.pop((meter, subject), None)
                if counts is None:
                    continue
                into = self._counts.setdefault((meter, alias), {})
                for b, value in counts.items():
                    into[b] = EXACT.add(into.get(b, ZERO), value)
                moved += 1
        return moved
