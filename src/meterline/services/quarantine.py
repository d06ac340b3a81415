"""The quarantine's release in scale mode (step 2 of ``ports.quarantine``): writing to the log
the events that customer saves released.

A save marks the held events of the subjects it claims released in its own transaction; the
:class:`QuarantineReleaser` then takes them under a lease, writes them (``ReleaseLog``) and marks
them delivered. :class:`ReleasingCustomers` runs it right after each save, so the save's answer
says what became of them; a node's background ticker runs it too, for releases a failed write
or a dead node left behind (their lease lapses first).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Sequence

from meterline.domain.customers.model import Customer, CustomerInput
from meterline.domain.events.model import Outcome, Status
from meterline.ports.customers import CustomerRepository, Saved
from meterline.ports.quarantine import HeldEvents, Release, ReleaseLog

log = logging.getLogger("meterline.quarantine")


class QuarantineReleaser:
    def __init__(
        self, held: HeldEvents, log_: ReleaseLog, *, batch: int = 1000, lease_s: float = 60.0, timeout: float = 60.0
    ) -> None:
        """``lease_s``: how long a taken event stays with this releaser before another may write
        it again (longer than a write can take); ``timeout``: how long to wait for a write."""
        self._held = held
        self._log = log_
        self._batch = batch
        self._lease_us = int(lease_s * 1_000_000)
        self._timeout = timeout

    def release(self) -> builtins.list[tuple[Release, Outcome]]:
        """Write every released, undelivered event nobody else holds; what became of each."""
        done: builtins.list[tuple[Release, Outcome]] = []
        while True:
            taken = self._held.take(self._batch, self._lease_us)
            if not taken:
                return done
            outcomes = self._log.write_released(taken).result(self._timeout)
            self._held.delivered([(r.id, _outcome(o)) for r, o in zip(taken, outcomes, strict=True)])
            done.extend(zip(taken, outcomes, strict=True))

    def tick(self) -> None:
        """The background run (a ticker's step)."""
        done = self.release()
        if done:
            log.info("released quarantined events", extra={"events": len(done)})


class ReleasingCustomers:
    """A customer repository whose saves write the events they release to the log before
    answering: ``released`` counts those in the log, ``released_rejected`` those dead-lettered
    because a meter can no longer read them. When the write fails the save still stands and
    its events stay released: the background ticker writes them later (they count then, and
    the answer counted them as released)."""

    def __init__(
        self,
        inner: CustomerRepository,
        releaser: QuarantineReleaser,
        changed: Callable[[str], None] = lambda namespace: None,
    ) -> None:
        """``changed(namespace)`` is called after a replace, upsert or delete, which may have
        left a subject unclaimed (the node's ``ScreenCache.forget``)."""
        self._inner = inner
        self._releaser = releaser
        self._changed = changed

    def create(self, namespace: str, inp: CustomerInput) -> Saved:
        return self._released(namespace, [self._inner.create(namespace, inp)])[0]

    def replace(self, namespace: str, key: str, inp: CustomerInput) -> Saved:
        try:
            return self._released(namespace, [self._inner.replace(namespace, key, inp)])[0]
        finally:
            self._changed(namespace)

    def upsert_many(self, namespace: str, inputs: Sequence[CustomerInput]) -> builtins.list[Saved]:
        try:
            return self._released(namespace, self._inner.upsert_many(namespace, inputs))
        finally:
            self._changed(namespace)

    def delete(self, namespace: str, key: str) -> None:
        try:
            self._inner.delete(namespace, key)
        finally:
            self._changed(namespace)

    def get(self, namespace: str, key_or_id: str, *, include_deleted: bool = False) -> Customer:
        return self._inner.get(namespace, key_or_id, include_deleted=include_deleted)

    def list(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Customer]:
        return self._inner.list(namespace, include_deleted=include_deleted)

    def by_subject(self, namespace: str, subject: str) -> Customer | None:
        return self._inner.by_subject(namespace, subject)

    def _released(self, namespace: str, saved: builtins.list[Saved]) -> builtins.list[Saved]:
        if not any(s.released for s in saved):
            return saved
        try:
            done = self._releaser.release()
        except Exception:
            log.exception("writing released events failed; the background release retries them")
            return saved
        rejected: dict[str, int] = {}
        for release, outcome in done:
            if release.event.namespace == namespace and outcome.status is Status.REJECTED:
                rejected[release.event.subject] = rejected.get(release.event.subject, 0) + 1
        out = []
        for s in saved:
            mine = sum(rejected.get(subject, 0) for subject in s.customer.subjects)
            mine = min(mine, s.released)
            out.append(Saved(s.customer, s.released - mine, s.released_rejected + mine))
        return out


def _outcome(o: Outcome) -> str:
    if o.status is Status.REJECTED and o.reason is not None:
        return f"rejected:{o.reason.value}"
    return o.status.value
