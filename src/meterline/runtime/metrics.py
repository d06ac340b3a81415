"""Prometheus metrics, one registry per app (no import-time globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meterline.domain.events.model import Outcome, Status
from meterline.runtime.background import Monitor


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("meterline_events", "Events by outcome", ["outcome"], registry=r)
        self.conflicts = Counter(
            "meterline_events_duplicate_conflict",
            "Duplicates whose payload differs from the first event with the same key",
            registry=r,
        )
        self.rejected = Counter(
            "meterline_events_rejected_by_reason", "Rejected events by reason", ["reason"], registry=r
        )
        self.latency = Histogram(
            "meterline_ingest_request_seconds",
            "Ingest request latency (until durable)",
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch = Histogram(
            "meterline_ingest_batch_events",
            "Events per ingest request",
            registry=r,
            buckets=(1, 10, 100, 500, 1000, 5000, 10000),
        )
        self.auth_failures = Counter(
            "meterline_auth_failures", "Requests refused for a missing or invalid key or token (METER-003)", registry=r
        )
        self._by_status = {status: self.events.labels(status.value) for status in Status}

    def observe(self, outcomes: list[Outcome]) -> None:
        self.batch.observe(len(outcomes))
        if len(outcomes) == 1 and outcomes[0].status is Status.ACCEPTED:  # the usual single event
            self._by_status[Status.ACCEPTED].inc()
            return
        counts = dict.fromkeys(Status, 0)
        for o in outcomes:
            counts[o.status] += 1
            if o.conflict:
                self.conflicts.inc()
            if o.reason is not None:
                self.rejected.labels(o.reason.value).inc()
        for status, n in counts.items():
            if n:
                self._by_status[status].inc(n)

    def gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        Gauge(name, doc, registry=self.registry).set_function(fn)

    def background(self, monitor: Monitor) -> None:
        """Export the background loops of ``monitor``: errors, liveness and current step time."""
        self.registry.register(_LoopCollector(monitor))


class _LoopCollector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "meterline_background_errors",
            "Exceptions raised by a step of a background thread (logged with traceback; the thread goes on)",
            labels=["thread"],
        )
        up = GaugeMetricFamily(
            "meterline_background_thread_up", "1 while a background thread is alive and not stuck", labels=["thread"]
        )
        busy = GaugeMetricFamily(
            "meterline_background_busy_seconds",
            "How long a background thread has been in its current step without a heartbeat (0 when idle)",
            labels=["thread"],
        )
        for s in self._monitor.statuses():
            errors.add_metric([s.name], s.errors)
            up.add_metric([s.name], 1 if s.alive and not s.stuck else 0)
            busy.add_metric([s.name], s.busy_for)
        yield errors
        yield up
        yield busy
