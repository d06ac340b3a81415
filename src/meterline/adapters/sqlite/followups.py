"""In-memory work that follows a committed write, and what happens when it fails.

A write is answered from its COMMIT. Some writes are followed, in the same call, by work on an
in-memory view of the store: the live counters index a new entitlement, or rebuild their index
after a feature, entitlement or customer changed; the alert evaluator reloads its rules after a
channel or rule changed. That work can fail after the write is stored (the store cannot be read
just then, a row the view cannot read, a bug). Guarantees:

1. A committed write is answered as done. A failed follow-up never turns its answer into 503
   ("nothing was recorded") or 500: :meth:`FollowUps.after_commit` catches it.
2. The failure is logged with its traceback (logger ``meterline.followups``, fields ``view``
   and ``operationalCode``) and counted (``meterline_followup_failures_total``).
3. The view is marked *stale* and rebuilt from the store, whole: by :meth:`FollowUps.heal`,
   which readers of the view call before trusting it (the live counters do, before every value
   and check: a stale index answers 503 instead of a wrong verdict), and by a background loop
   every ``retry_interval`` seconds, until a rebuild succeeds.
4. A view whose rebuild has failed at least once since it went stale is a readiness problem
   (``/readyz`` not ready, METER-004: the view lags behind the store) until it is rebuilt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from meterline.domain.errors import OpsCode
from meterline.runtime.background import Monitor, Ticker

log = logging.getLogger("meterline.followups")


@dataclass(slots=True)
class _Stale:
    rebuild: Callable[[], None]
    retried: bool = False
    """A rebuild was tried since the view went stale, and failed."""


class FollowUps:
    """The stale views of one backend and their rebuilds (see the module doc)."""

    def __init__(self, monitor: Monitor | None = None, retry_interval: float = 5.0) -> None:
        self.failures = 0
        self._stale: dict[str, _Stale] = {}
        self._lock = threading.Lock()
        self._ticker = Ticker("followups", self.heal, lambda: retry_interval, monitor)

    def after_commit(self, view: str, work: Callable[[], None], rebuild: Callable[[], None]) -> None:
        """Run ``work`` on ``view`` after a committed write; on failure mark the view stale
        (``rebuild`` restores it from the store) instead of raising."""
        try:
            work()
        except Exception:
            self._failed(view, "after a committed write")
            with self._lock:
                self._stale.setdefault(view, _Stale(rebuild))

    def guarded(self, view: str, work: Callable[..., None], rebuild: Callable[[], None]) -> Callable[..., None]:
        """``work`` wrapped by :meth:`after_commit`, for stores that call it after their writes."""
        return lambda *args: self.after_commit(view, lambda: work(*args), rebuild)

    def is_stale(self, view: str) -> bool:
        return view in self._stale

    def heal(self, view: str | None = None) -> bool:
        """Rebuild the stale views (or only ``view``); True when none of them is stale now."""
        with self._lock:
            todo = [(name, s) for name, s in self._stale.items() if view is None or name == view]
        healed = True
        for name, stale in todo:
            try:
                stale.rebuild()
            except Exception:
                self._failed(name, "rebuilding it from the store")
                stale.retried, healed = True, False
                continue
            with self._lock:
                if self._stale.get(name) is stale:
                    del self._stale[name]
            log.info("%s rebuilt from the store", name, extra={"view": name})
        return healed

    def problems(self) -> list[str]:
        """One sentence per view whose rebuild failed since it went stale (for /readyz)."""
        with self._lock:
            names = [name for name, s in self._stale.items() if s.retried]
        return [
            f"{name} lag behind the store: rebuilding them failed (see the meterline.followups log)" for name in names
        ]

    def start(self) -> None:
        self._ticker.start()

    def close(self) -> None:
        self._ticker.close()

    def _failed(self, view: str, when: str) -> None:
        self.failures += 1
        code = OpsCode.LAGGING.value
        log.exception("%s %s failed %s; marked stale", code, view, when, extra={"view": view, "operationalCode": code})
