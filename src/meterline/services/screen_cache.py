"""The unknown-subject screen of scale-mode ingest, remembered briefly on each API node.

Every ingest request asks the shared catalog for its namespace's unknown-subject policy and
which of its subjects a customer claims (``HeldEvents.screen``: a PostgreSQL round trip that
costs about as much as the dedupe claim and confirm together, benchmarks/scale_screen.py). The
answers change rarely, so a node keeps, for ``ttl_us``:

- each namespace's policy (when it resolves to ``accept``, the default, a request needs no
  subject lookup at all);
- each subject found claimed. A subject found unclaimed is never remembered: a customer that
  claims it is seen by the very next request (and the quarantine's hold re-checks under the
  customer lock anyway).

What this node itself changes (the policy; a customer's replace or delete, through
``ReleasingCustomers``'s ``changed`` hook) is forgotten at once, so a node always reads its own
writes. A change made through another node reaches this one within ``ttl_us`` (documented:
docs/scale.md). ``ttl_us`` 0 asks the catalog every time.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Sequence

from meterline.domain.customers.model import UnknownSubjects
from meterline.domain.events.model import Event
from meterline.ports.customers import NamespaceSettings
from meterline.ports.quarantine import HeldEvents, Release, Screened

MAX_SUBJECTS = 200_000
"""Claimed subjects remembered at most (all namespaces); past it the memory starts afresh."""


class ScreenCache:
    """``HeldEvents`` whose ``screen`` answers from memory while fresh (see the module)."""

    def __init__(self, inner: HeldEvents, now_us: Callable[[], int], ttl_us: int, default: UnknownSubjects) -> None:
        self._inner = inner
        self._now_us = now_us
        self._ttl_us = ttl_us
        self._default = default
        self._lock = threading.Lock()
        self._policies: dict[str, tuple[UnknownSubjects | None, int]] = {}
        self._claimed: dict[tuple[str, str], int] = {}

    def screen(self, namespace: str, subjects: Sequence[str]) -> Screened:
        now = self._now_us()
        with self._lock:
            policy = self._policies.get(namespace)
            if policy is not None and policy[1] > now:
                if (policy[0] or self._default) is UnknownSubjects.ACCEPT:
                    return Screened(policy[0], frozenset())
                owned = {s for s in subjects if self._claimed.get((namespace, s), 0) > now}
                if len(owned) == len(set(subjects)):
                    return Screened(policy[0], frozenset(owned))
        screened = self._inner.screen(namespace, subjects)
        if self._ttl_us > 0:
            until = now + self._ttl_us
            with self._lock:
                self._policies[namespace] = (screened.policy, until)
                if len(self._claimed) + len(screened.owned) > MAX_SUBJECTS:
                    self._claimed.clear()
                for subject in screened.owned:
                    self._claimed[(namespace, subject)] = until
        return screened

    def forget(self, namespace: str) -> None:
        """Ask the catalog again for ``namespace`` (its policy or customers changed here)."""
        with self._lock:
            self._policies.pop(namespace, None)
            for key in [k for k in self._claimed if k[0] == namespace]:
                del self._claimed[key]

    def hold(self, namespace: str, token: str, events: Sequence[Event], received_us: int) -> bool:
        return self._inner.hold(namespace, token, events, received_us)

    def take(self, limit: int, lease_us: int) -> builtins.list[Release]:
        return self._inner.take(limit, lease_us)

    def delivered(self, outcomes: Sequence[tuple[int, str]]) -> None:
        self._inner.delivered(outcomes)


class ForgettingSettings:
    """Namespace settings whose policy changes make ``cache`` ask again."""

    def __init__(self, inner: NamespaceSettings, cache: ScreenCache) -> None:
        self._inner = inner
        self._cache = cache

    def policy(self, namespace: str) -> UnknownSubjects | None:
        return self._inner.policy(namespace)

    def set_policy(self, namespace: str, policy: UnknownSubjects) -> None:
        self._inner.set_policy(namespace, policy)
        self._cache.forget(namespace)
