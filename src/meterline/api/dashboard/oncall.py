"""The on-call view: ingest outcomes and rates, ingest latency, aggregation lag, dead letters,
alert deliveries, storage health. Its numbers are read from the same Prometheus registry that
``/metrics`` exports (not recomputed), so the page and a scrape never disagree; rates are the
difference between this process's samples, taken each time the page refreshes itself."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise

from starlette.responses import Response

from meterline.api.dashboard.web import Chart, View, view
from meterline.api.health import Health
from meterline.domain.auth.keys import Scope
from meterline.ports.notifications import EventFilter
from meterline.runtime.metrics import Metrics

WINDOW_S = 60.0
"""Rates are averaged over the samples of about this long."""
KEEP = 360
OUTCOMES = ("accepted", "duplicate", "rejected", "quarantined")


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.time()
    values: dict[str, float]
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count) of ingest latency


@dataclass
class Sampler:
    """The recent samples of one process's counters (kept for the on-call view only)."""

    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=KEEP))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, metrics: Metrics) -> tuple[Sample, Sample | None, list[Sample]]:
        """A new sample, the one about ``WINDOW_S`` before it (None on the first), and all kept."""
        now = read(metrics)
        with self.lock:
            self.samples.append(now)
            older = [s for s in self.samples if now.at - s.at >= min(WINDOW_S, 2.0)]
            base = next((s for s in reversed(older) if now.at - s.at >= WINDOW_S), older[0] if older else None)
            return now, base, list(self.samples)


def read(metrics: Metrics) -> Sample:
    """The registry's current values, keyed ``name`` or ``name{label}``."""
    values: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for family in metrics.registry.collect():
        for s in family.samples:
            label = ",".join(str(v) for v in s.labels.values() if s.name != "meterline_ingest_request_seconds_bucket")
            if s.name == "meterline_ingest_request_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
                continue
            values[f"{s.name}{{{label}}}" if label else s.name] = s.value
    return Sample(time.time(), values, tuple(buckets))


def quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the latency bucket holding quantile ``q`` (None without requests)."""
    items = sorted(buckets)
    if not items or items[-1][1] <= 0:
        return None
    target = q * items[-1][1]
    return next((bound for bound, count in items if count >= target), None)


def _delta(now: Sample, base: Sample | None) -> tuple[dict[str, float], float, list[tuple[float, float]]]:
    if base is None:
        return {}, 0.0, []
    span = now.at - base.at
    diff = {k: v - base.values.get(k, 0.0) for k, v in now.values.items()}
    before = dict(base.buckets)
    return diff, span, [(bound, count - before.get(bound, 0.0)) for bound, count in now.buckets]


def _rate(diff: dict[str, float], span: float, key: str) -> Decimal | None:
    if span <= 0:
        return None
    return Decimal(diff.get(key, 0.0) / span).quantize(Decimal("0.01"))


def _reasons(values: dict[str, float], diff: dict[str, float], span: float) -> list[tuple[str, int, Decimal | None]]:
    prefix = "meterline_events_rejected_by_reason_total{"
    return sorted(
        (k[len(prefix) : -1], int(v), _rate(diff, span, k)) for k, v in values.items() if k.startswith(prefix)
    )


def _history_chart(samples: list[Sample], stamp_view: View) -> Chart:
    """Events per second between consecutive samples, by outcome."""
    xs: list[int] = []
    series: dict[str, list[Decimal | None]] = {o: [] for o in OUTCOMES}
    for prev, cur in pairwise(samples):
        span = cur.at - prev.at
        if span <= 0.5:
            continue
        xs.append(int(cur.at))
        for o in OUTCOMES:
            key = f"meterline_events_total{{{o}}}"
            series[o].append(
                Decimal((cur.values.get(key, 0.0) - prev.values.get(key, 0.0)) / span).quantize(Decimal("0.01"))
            )
    return Chart("ingest-rate", "Ingest rate by outcome", "events/s", "UTC", xs, series, stamp_view.stamp())


def _deliveries(v: View) -> dict[str, int]:
    now = v.ctx.clock.now_us()
    _, events = v.ctx.catalog.notifications.events(
        v.namespace, EventFilter(start_us=now - 24 * 3600 * 1_000_000), limit=500, offset=0
    )
    counts = {"delivered": 0, "retrying": 0, "failed": 0, "pending": 0}
    for e in events:
        for d in e.event.deliveries:
            if d.state == "SUCCESS":
                counts["delivered"] += 1
            elif d.state == "FAILED":
                counts["failed"] += 1
            elif d.attempts > 0:
                counts["retrying"] += 1
            else:
                counts["pending"] += 1
    return counts


@view(Scope.READ)
async def oncall(v: View) -> Response:
    sampler: Sampler = v.request.app.state.dashboard.sampler
    now, base, kept = sampler.take(v.ctx.metrics)
    diff, span, window_buckets = _delta(now, base)
    health: Health = v.request.app.state.health
    problems = [p.json() for p in await v.run(health.problems)]
    warnings = [w.json() for w in await v.run(health.warnings)]
    deliveries = await v.run(_deliveries, v)
    outcomes = [
        (
            o,
            int(now.values.get(f"meterline_events_total{{{o}}}", 0)),
            _rate(diff, span, f"meterline_events_total{{{o}}}"),
        )
        for o in OUTCOMES
    ]
    conflicts = "meterline_events_duplicate_conflict_total"
    latency = {
        q: quantile(window_buckets if window_buckets and window_buckets[-1][1] > 0 else now.buckets, q)
        for q in (0.5, 0.9, 0.99)
    }
    template = "oncall_body.html" if v.request.headers.get("hx-request") else "oncall.html"
    return v.render(
        template,
        title="On-call",
        sample=now,
        span=span,
        outcomes=outcomes,
        conflicts=(int(now.values.get(conflicts, 0)), _rate(diff, span, conflicts)),
        reasons=_reasons(now.values, diff, span),
        latency=latency,
        latency_window=bool(window_buckets and window_buckets[-1][1] > 0),
        values=now.values,
        problems=problems,
        warnings=warnings,
        deliveries=deliveries,
        rate_chart=_history_chart(kept, v),
        sampled_us=int(now.at * 1_000_000),
    )
