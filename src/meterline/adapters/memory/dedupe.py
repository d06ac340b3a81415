"""The dedupe store in memory (``ports.dedupe.DedupeStore``): the reference for the protocol,
for one process. Each key is a row ``(state, token, digest, at_us)``; the whole of each call runs
under one lock, which is what a shared store gets from its transactions or scripts."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meterline.ports.dedupe import Claims, EventKey, Verdict

Key = tuple[str, str, str]


@dataclass(slots=True)
class _Row:
    confirmed: bool
    token: str
    digest: bytes
    at_us: int
    """Confirmed: when; pending: when the lease lapses."""


class MemoryDedupe:
    def __init__(self, now_us: Callable[[], int], *, lease_us: int, window_us: int | None = None) -> None:
        """``lease_us``: how long a claim holds its key; ``window_us``: how long a confirmed key
        is remembered (None: forever)."""
        self._now_us = now_us
        self._lease_us = lease_us
        self._window_us = window_us
        self._lock = threading.Lock()
        self._rows: dict[Key, _Row] = {}

    def claim(self, keys: Sequence[EventKey]) -> Claims:
        token = uuid.uuid4().hex
        with self._lock:
            now = self._now_us()
            return Claims(token, [self._claim_one(k, token, now) for k in keys])

    def _claim_one(self, k: EventKey, token: str, now: int) -> Verdict:
        row = self._rows.get((k.namespace, k.source, k.id))
        if row is not None and not self._lapsed(row, now):
            if row.confirmed or row.token == token:  # an earlier occurrence in this call holds it
                return Verdict.DUPLICATE if row.digest == k.digest else Verdict.CONFLICT
            return Verdict.BUSY
        self._rows[(k.namespace, k.source, k.id)] = _Row(False, token, k.digest, now + self._lease_us)
        return Verdict.CLAIMED

    def confirm(self, token: str, keys: Sequence[EventKey]) -> list[bool]:
        with self._lock:
            now = self._now_us()
            held = []
            for k in keys:
                row = self._rows.get((k.namespace, k.source, k.id))
                ok = row is not None and row.token == token
                if row is not None and ok and not row.confirmed:
                    row.confirmed, row.at_us = True, now
                held.append(ok)
            return held

    def release(self, token: str, keys: Sequence[EventKey]) -> None:
        with self._lock:
            for k in keys:
                row = self._rows.get((k.namespace, k.source, k.id))
                if row is not None and row.token == token and not row.confirmed:
                    del self._rows[(k.namespace, k.source, k.id)]

    def confirmed_at(self, namespace: str, source: str, event_id: str) -> int | None:
        with self._lock:
            row = self._rows.get((namespace, source, event_id))
            if row is None or not row.confirmed or self._lapsed(row, self._now_us()):
                return None
            return row.at_us

    def prune(self) -> int:
        if self._window_us is None:
            return 0
        with self._lock:
            now = self._now_us()
            old = [key for key, row in self._rows.items() if row.at_us + self._window_us < now]
            for key in old:
                del self._rows[key]
            return len(old)

    def _lapsed(self, row: _Row, now: int) -> bool:
        """A pending claim past its lease, or a confirmed key older than the window."""
        if not row.confirmed:
            return row.at_us <= now
        return self._window_us is not None and row.at_us + self._window_us < now
