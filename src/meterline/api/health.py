"""Readiness and the operational warnings behind ``/readyz``.

``/readyz`` answers **503** ``not_ready`` (``operationalCode`` of the first failing check, all
of them in ``checks``) when

- METER-001: the store cannot be read (in scale mode: PostgreSQL, ClickHouse or the Kafka
  brokers do not answer, each named), or the last commit failed and none has succeeded since;
- METER-005: a background thread is dead, or stuck in one step (``health.stuck_after``).
- METER-004: an in-memory view of the store (the live counters' index, the alert rules) missed
  a committed change and rebuilding it from the store has failed since
  (``meterline.adapters.sqlite.followups``); it is retried in the background.

It stays **200** ``ready`` and lists ``warnings`` when

- METER-004: the 99th percentile of ingest latency over the last minute is above
  ``health.max_ingest_latency``, the rollup lag above ``health.max_rollup_lag`` (events), or
  the aggregator has been behind the ledger for longer than ``health.max_aggregation_lag``
  seconds without catching up;
- METER-002: backpressure refused requests in the last minute;
- METER-007 (scale mode): the Kafka topic may keep an erased subject's records longer than
  ``erasure.max_delay`` (its retention unlimited, longer, or not reported by the broker:
  ``services.erasure_deadline``);
- METER-008 (scale mode): a PostgreSQL table an erasure changed is not rewritten yet (its lock
  stayed busy through every try: ``services.log_erasure``, step 9); retried every few seconds.

Warnings do not make a node unready: taking an overloaded node out of rotation only moves its
load to the others. :class:`HealthWatch` evaluates latency and lag every
``health.check_interval`` seconds and logs each METER-004 and METER-005 finding when it
appears and when it clears.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Histogram

from meterline.api.backpressure import Admission
from meterline.config import HealthConfig
from meterline.domain.errors import OpsCode, StorageUnavailable
from meterline.ports.status import StoreStatus
from meterline.runtime.background import Monitor, Ticker

log = logging.getLogger("meterline.health")
RECENT = 60.0  # seconds: "the last minute" of the warnings above


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    code: OpsCode
    detail: str

    def json(self) -> dict[str, str]:
        return {"check": self.check, "operationalCode": self.code.value, "detail": self.detail}


class LatencyWindow:
    """The 99th percentile of a latency histogram over roughly the last ``window`` seconds,
    from the differences of its cumulative bucket counts (so it is a bucket's upper bound)."""

    def __init__(self, histogram: Histogram, window: float = RECENT, now: Callable[[], float] = time.monotonic) -> None:
        self._histogram = histogram
        self._window = window
        self._now = now
        self._snapshots: deque[tuple[float, list[tuple[float, float]]]] = deque()

    def sample(self) -> float | None:
        """Take a snapshot; return the p99 bound since the oldest kept one (None: no requests)."""
        now, current = self._now(), self._buckets()
        self._snapshots.append((now, current))
        while len(self._snapshots) > 1 and now - self._snapshots[1][0] >= self._window:
            self._snapshots.popleft()
        base = self._snapshots[0][1]
        counts = [(le, n - b) for (le, n), (_, b) in zip(current, base, strict=True)]
        total = counts[-1][1] if counts else 0
        if total <= 0:
            return None
        return next((le for le, n in counts if n >= 0.99 * total), math.inf)

    def _buckets(self) -> list[tuple[float, float]]:
        return [
            (float(s.labels["le"]), s.value)
            for metric in self._histogram.collect()
            for s in metric.samples
            if s.name.endswith("_bucket")
        ]


class HealthWatch:
    """Evaluates latency, lag and the background loops every ``check_interval`` seconds."""

    def __init__(
        self,
        config: HealthConfig,
        latency: LatencyWindow,
        lag: Callable[[], int],
        monitor: Monitor,
        lag_seconds: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._config = config
        self._latency = latency
        self._lag = lag
        self._lag_seconds = lag_seconds
        self._monitor = monitor
        self.warnings: list[Finding] = []
        self._seen: set[str] = set()
        self._ticker = Ticker("health", self.check, lambda: self._config.check_interval, monitor)

    def start(self) -> None:
        self._ticker.start()

    def close(self) -> None:
        self._ticker.close()

    def check(self) -> list[Finding]:
        """Evaluate now; log what appeared and what cleared since the last check."""
        cfg = self._config
        found = []
        p99 = self._latency.sample()
        if p99 is not None and p99 > cfg.max_ingest_latency:
            bound = "over the largest bucket" if math.isinf(p99) else f"up to {p99:g} s"
            detail = f"ingest latency p99 over the last minute is {bound} (threshold {cfg.max_ingest_latency:g} s)"
            found.append(Finding("ingest_latency", OpsCode.LAGGING, detail))
        lag = self._lag()
        if lag > cfg.max_rollup_lag:
            detail = f"rollup lag: {lag} ledger events not yet applied to a meter (threshold {cfg.max_rollup_lag})"
            found.append(Finding("rollup_lag", OpsCode.LAGGING, detail))
        behind = self._lag_seconds()
        if behind > cfg.max_aggregation_lag:
            detail = (
                f"aggregation lag: the aggregator has been behind the ledger for {behind:.1f} s without catching up"
                f" (threshold {cfg.max_aggregation_lag:g} s)"
            )
            found.append(Finding("aggregation_lag", OpsCode.LAGGING, detail))
        self.warnings = found
        self._log_changes(found + loop_findings(self._monitor))
        return found

    def _log_changes(self, findings: list[Finding]) -> None:
        now = {f.check: f for f in findings}
        for key, f in now.items():
            if key not in self._seen:
                level = logging.ERROR if f.code is OpsCode.BACKGROUND_STALLED else logging.WARNING
                log.log(level, "%s %s", f.code.value, f.detail, extra={"operationalCode": f.code.value})
        for key in self._seen - now.keys():
            log.info("cleared: %s", key, extra={"check": key})
        self._seen = set(now)


def loop_findings(monitor: Monitor) -> list[Finding]:
    """A METER-005 finding per dead or stuck background loop."""
    return [
        Finding(f"thread:{s.name}", OpsCode.BACKGROUND_STALLED, s.problem)
        for s in monitor.statuses()
        if s.problem is not None
    ]


class Health:
    """Composes the readiness checks and warnings (see the module docstring)."""

    def __init__(
        self,
        store: StoreStatus,
        monitor: Monitor,
        watch: HealthWatch,
        admission: Admission,
        now: Callable[[], float] = time.monotonic,
        retention_blocked: Callable[[], str | None] = lambda: None,
        erasure_deadline: Callable[[], str | None] | None = None,
        erasure_files: Callable[[], str | None] | None = None,
    ) -> None:
        self._store, self._monitor = store, monitor
        self._watch, self._admission, self._now = watch, admission, now
        self._retention_blocked = retention_blocked
        self._erasure_deadline = erasure_deadline or (lambda: None)
        self._erasure_files = erasure_files or (lambda: None)

    def problems(self) -> list[Finding]:
        found = []
        try:
            self._store.probe()
        except StorageUnavailable as exc:  # its detail names what failed (scale mode: which engine)
            found.append(Finding("storage", OpsCode.STORAGE_UNAVAILABLE, exc.detail))
        except Exception:
            found.append(Finding("storage", OpsCode.STORAGE_UNAVAILABLE, "the store cannot be read"))
        writable, failure = self._store.writable()
        if not writable:
            detail = failure or "the last commit failed"
            found.append(Finding("storage", OpsCode.STORAGE_UNAVAILABLE, f"{detail}; no commit has succeeded since"))
        found += [Finding("stale_view", OpsCode.LAGGING, detail) for detail in self._store.stale_views()]
        return found + loop_findings(self._monitor)

    def warnings(self) -> list[Finding]:
        found = list(self._watch.warnings)
        last = self._admission.last_refused
        if last is not None and self._now() - last < RECENT:
            detail = (
                f"backpressure refused requests with 503 overloaded in the last minute"
                f" ({self._admission.refused} since start)"
            )
            found.append(Finding("backpressure", OpsCode.OVERLOADED, detail))
        blocked = self._retention_blocked()
        if blocked is not None:
            found.append(Finding("retention", OpsCode.LEDGER_MISMATCH, f"retention stopped: {blocked}"))
        late = self._erasure_deadline()
        if late is not None:
            found.append(Finding("erasure_deadline", OpsCode.ERASURE_DEADLINE, late))
        unwritten = self._erasure_files()
        if unwritten is not None:
            found.append(Finding("erasure_files", OpsCode.ERASURE_FILES, unwritten))
        return found
