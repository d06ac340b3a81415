"""Events held in memory because no customer claims their subject yet (the ``QUARANTINE``
unknown-subject policy), shared by :class:`~meterline.adapters.memory.ledger.MemoryLedger`,
which holds them, and :class:`~meterline.adapters.memory.customers.MemoryCustomers`, whose
saves release them. Both use the customers' lock, so a save and an append never interleave:
an event is either held before the save (and released by it) or appended after it."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass

from meterline.domain.events.model import Event
from meterline.ports.customers import Quarantined


@dataclass(frozen=True, slots=True)
class _Held:
    id: int
    event: Event
    received_us: int


class MemoryQuarantine:
    """Held events in arrival order; ids start at 1 and are never reused."""

    def __init__(self) -> None:
        self._held: list[_Held] = []
        self._next_id = 1

    def hold(self, event: Event, received_us: int) -> None:
        self._held.append(_Held(self._next_id, event, received_us))
        self._next_id += 1

    def take(self, namespace: str, subjects: Sequence[str]) -> builtins.list[Event]:
        """Remove and return the namespace's events of ``subjects``, oldest first."""
        wanted = set(subjects)
        taken = [h for h in self._held if h.event.namespace == namespace and h.event.subject in wanted]
        if taken:
            self._held = [h for h in self._held if not (h.event.namespace == namespace and h.event.subject in wanted)]
        return [h.event for h in taken]

    def list(self, namespace: str, subject: str | None, *, limit: int, after_id: int) -> builtins.list[Quarantined]:
        found = (
            h
            for h in self._held
            if h.event.namespace == namespace and h.id > after_id and (subject is None or h.event.subject == subject)
        )
        return [_quarantined(h) for h, _ in zip(found, range(max(limit, 0)), strict=False)]

    def __len__(self) -> int:
        return len(self._held)


def _quarantined(h: _Held) -> Quarantined:
    e = h.event
    return Quarantined(h.id, e.source, e.id, e.type, e.subject, e.time_us, h.received_us, e.raw)
