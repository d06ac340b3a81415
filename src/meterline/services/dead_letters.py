"""Dead letters: listing and purging the rejected events of a namespace."""

from __future__ import annotations

from meterline.domain.errors import InvalidInput
from meterline.domain.events.model import Reason
from meterline.ports.dead_letters import DeadLetter, DeadLetterFilter, DeadLetterStore

REASONS = tuple(reason.value for reason in Reason)


class DeadLetterService:
    def __init__(self, store: DeadLetterStore) -> None:
        self._store = store

    def list(self, namespace: str, f: DeadLetterFilter, *, limit: int, after_id: int = 0) -> list[DeadLetter]:
        return self._store.list(namespace, _checked(f), limit=limit, after_id=after_id)

    def purge(self, namespace: str, f: DeadLetterFilter) -> int:
        return self._store.purge(namespace, _checked(f))

    def count(self) -> int:
        return self._store.count()


def _checked(f: DeadLetterFilter) -> DeadLetterFilter:
    if f.reason is not None and f.reason not in REASONS:
        raise InvalidInput(f"`reason` must be one of {', '.join(REASONS)}", code="invalid_parameter")
    return f
