"""Prometheus metrics, one registry per app (no import-time globals)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from meterline.events.model import Outcome, Status


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
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.batch = Histogram(
            "meterline_ingest_batch_events",
            "Events per ingest request",
            registry=r,
            buckets=(1, 10, 100, 500, 1000, 5000, 10000),
        )
        for status in Status:
            self.events.labels(status.value)

    def observe(self, outcomes: list[Outcome]) -> None:
        self.batch.observe(len(outcomes))
        counts = {s: 0 for s in Status}
        for o in outcomes:
            counts[o.status] += 1
            if o.conflict:
                self.conflicts.inc()
            if o.reason is not None:
                self.rejected.labels(o.reason.value).inc()
        for status, n in counts.items():
            if n:
                self.events.labels(status.value).inc(n)

    def gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        Gauge(name, doc, registry=self.registry).set_function(fn)
