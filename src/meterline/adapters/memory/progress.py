"""Followers' progress per stream, in memory (``ports.sink.FollowerProgress``)."""

from __future__ import annotations

import threading


class MemoryProgress:
    def __init__(self) -> None:
        self._done: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def done(self, follower: str, stream: str) -> int:
        return self._done.get((follower, stream), 0)

    def advance(self, follower: str, stream: str, end: int) -> None:
        with self._lock:
            key = (follower, stream)
            self._done[key] = max(self._done.get(key, 0), end)
