"""The meter catalog in memory (definitions only: no usage is kept here)."""

from __future__ import annotations

import builtins
import itertools
import threading
from collections.abc import Callable

import msgspec
from ulid import ULID

from meterline.domain.errors import Conflict, NotFound
from meterline.domain.meters.model import Meter, MeterSpec, group_by_not_supported


class MemoryMeters:
    def __init__(self, now_us: Callable[[], int]) -> None:
        self._now_us = now_us
        self._lock = threading.Lock()
        self._live: dict[int, Meter] = {}
        self._keys = itertools.count(1)

    def create(self, namespace: str, spec: MeterSpec) -> Meter:
        with self._lock:
            if any((m.namespace, m.slug) == (namespace, spec.slug) for m in self._live.values()):
                raise Conflict(f"A meter with slug {spec.slug!r} already exists", code="meter_exists")
            now = self._now_us()
            meter = Meter(next(self._keys), str(ULID()), namespace, spec, now, now)
            self._live[meter.key] = meter
            return meter

    def get(self, namespace: str, id_or_slug: str) -> Meter:
        with self._lock:
            for m in self._live.values():
                if m.namespace == namespace and id_or_slug in (m.slug, m.id):
                    return m
        raise NotFound(f"No meter {id_or_slug!r}", code="meter_not_found")

    def list(self, namespace: str) -> builtins.list[Meter]:
        with self._lock:
            return [m for m in self._live.values() if m.namespace == namespace]

    def live(self) -> builtins.list[Meter]:
        """Every live meter of every namespace, by key (what the usage store follows)."""
        with self._lock:
            return [self._live[key] for key in sorted(self._live)]

    def update(self, namespace: str, id_or_slug: str, spec: MeterSpec) -> Meter:
        meter = self.get(namespace, id_or_slug)
        with self._lock:
            if meter.key not in self._live:
                raise NotFound(f"No meter {id_or_slug!r}", code="meter_not_found")
            if spec.group_by != meter.spec.group_by:  # the in-memory usage store keeps no ledger to re-derive from
                raise group_by_not_supported("in-memory")
            updated = msgspec.structs.replace(meter, spec=spec, updated_us=self._now_us())
            self._live[meter.key] = updated
            return updated

    def delete(self, namespace: str, id_or_slug: str) -> None:
        meter = self.get(namespace, id_or_slug)
        with self._lock:
            self._live.pop(meter.key, None)
