"""A least-recently-used cache bounded by entries AND by the total size of what it holds.

``functools.lru_cache`` counts entries only, so a cache of 4,096 entries can hold gigabytes
when the entries are large (a window grid of a 30-year MINUTE query has 15 million
boundaries). Every cache of values whose size depends on a request uses this one instead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most ``max_entries`` values whose ``size`` adds up to at most ``max_size``.

    A value larger than ``max_size // 4`` is never kept. Safe to share between threads.
    """

    def __init__(self, max_entries: int, max_size: int, size: Callable[[V], int]) -> None:
        self.max_entries, self.max_size = max_entries, max_size
        self._size_of = size
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V) -> None:
        cost = self._size_of(value)
        if cost > self.max_size // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= old[1]
            self._items[key] = (value, cost)
            self._size += cost
            while len(self._items) > self.max_entries or self._size > self.max_size:
                _, (_, dropped) = self._items.popitem(last=False)
                self._size -= dropped

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """The summed size of the values held."""
        return self._size

    def memo(self, compute: Callable[[K], V]) -> Callable[[K], V]:
        """``compute`` with its results cached here (``key`` is its only argument)."""

        def cached(key: K) -> V:
            hit = self.get(key)
            if hit is None:
                hit = compute(key)
                self.put(key, hit)
            return hit

        return cached
