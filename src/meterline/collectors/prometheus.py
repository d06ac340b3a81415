"""The Prometheus / OpenMetrics scraper: selected counter and gauge series become usage events.

Per target, every ``interval`` seconds (readings are aligned to multiples of it, in UTC):

- a **counter** series gives the increase since the previous reading. A value lower than the
  previous one, or a changed ``_created`` timestamp (prometheus_client exports one per
  counter), is a reset: the increase is then the new value itself, as Prometheus's
  ``increase()`` counts it. The first reading of a series is its baseline (no event).
- a **gauge** series gives its value at the reading.

Each event's id is a UUID made from (target, series, interval start), and a series is read at
most once per interval, so a collector never makes two events for one interval. The last
reading of each series is kept in the state file (``state.py``), so a restarted collector
continues from it: what happened while it was down lands in the first interval after it
returns. A reading's events are saved as pending before they are recorded and committed
after (``collect_once``), so a crash in between records the same events again (duplicates,
counted once), never a new delta that would count part of the increase twice.
"""

from __future__ import annotations

import math
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from meterline.client import Client
from meterline.collectors.state import State

_IDS = uuid.UUID("6d2f3b8e-6a0c-5d1e-9f43-0c1f9a1b7e55")  # the namespace of collector event ids
ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


@dataclass(frozen=True)
class Series:
    metric: str
    """Sample name (for a counter, the ``_total`` sample), e.g. ``http_requests_total``."""
    kind: str = "counter"
    """``counter`` (increase per interval) or ``gauge`` (value at each reading)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Only samples with these label values."""
    event_type: str | None = None
    """CloudEvents type of its events (default: the target's)."""


@dataclass(frozen=True)
class Target:
    url: str
    series: list[Series]
    name: str = ""
    """Stable name of the target in event ids and state (default: its URL)."""
    interval: float = 60.0
    event_type: str = "metric"
    subject: str | None = None
    """Customer of every event of this target, unless ``subject_label`` names one per sample."""
    subject_label: str | None = None
    """Label whose value is the customer (samples without it are skipped)."""

    @property
    def key(self) -> str:
        return self.name or self.url


def load_targets(path: Path) -> list[Target]:
    """Targets from a TOML file of ``[[target]]`` tables with ``[[target.series]]`` in each."""
    raw = tomllib.loads(path.read_text())
    targets = []
    for t in raw.get("target", []):
        series = [Series(**s) for s in t.pop("series", [])]
        target = Target(series=series, **t)
        problems = [
            f"series {s.metric}: kind must be counter or gauge" for s in series if s.kind not in ("counter", "gauge")
        ]
        if not series:
            problems.append("no [[target.series]]")
        if (target.subject is None) == (target.subject_label is None):
            problems.append("set exactly one of subject and subject_label")
        if not target.interval > 0:
            problems.append("interval must be > 0")
        if problems:
            raise ValueError(f"target {target.key}: " + "; ".join(problems))
        targets.append(target)
    if not targets:
        raise ValueError(f"{path} has no [[target]]")
    return targets


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    created: float | None


def scrape(http: httpx.Client, url: str) -> list[Sample]:
    """The samples of one scrape (text format 0.0.4 or OpenMetrics)."""
    response = http.get(url, headers={"Accept": ACCEPT})
    response.raise_for_status()
    text = response.text
    openmetrics = response.headers.get("content-type", "").startswith("application/openmetrics-text")
    families = openmetrics_families(text) if openmetrics else text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
    samples = [(s.name, dict(s.labels), float(s.value)) for f in families for s in f.samples]
    created = {(n[: -len("_created")], _key(labels)): v for n, labels, v in samples if n.endswith("_created")}
    return [
        Sample(n, labels, v, created.get((n.removesuffix("_total"), _key(labels))))
        for n, labels, v in samples
        if not n.endswith("_created")
    ]


def _key(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def reading_events(
    target: Target, samples: list[Sample], last: dict[str, Any], at: datetime
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The usage events of one reading at ``at`` against the ``last`` readings per series, and
    the readings to remember. A series already read in this interval is left for the next."""
    start = _interval_start(at, target.interval)
    events, readings = [], {}
    for series in target.series:
        for sample in samples:
            if sample.name != series.metric or any(sample.labels.get(k) != v for k, v in series.labels.items()):
                continue
            subject = target.subject or sample.labels.get(target.subject_label or "")
            if not subject or math.isnan(sample.value):
                continue
            key = f"{sample.name}{{{_key(sample.labels)}}}"
            previous = last.get(key)
            if previous is not None and previous["interval"] >= start.isoformat():
                continue  # read in this interval already: its increase goes to the next one
            current = Decimal(repr(sample.value))
            readings[key] = {"value": str(current), "created": sample.created, "interval": start.isoformat()}
            value = current if series.kind == "gauge" else _increase(previous, current, sample.created)
            if value is not None:
                events.append(_event(target, series, sample, key, subject, value, start))
    return events, readings


def _increase(previous: dict[str, Any] | None, current: Decimal, created: float | None) -> Decimal | None:
    if previous is None:
        return None  # the baseline
    before = Decimal(previous["value"])
    reset = current < before or (created is not None and previous.get("created") not in (None, created))
    return current if reset else current - before


def _event(
    target: Target, series: Series, sample: Sample, key: str, subject: str, value: Decimal, start: datetime
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid5(_IDS, f"{target.key}|{key}|{start.isoformat()}")),
        "source": f"meterline-collect-prometheus/{target.key}",
        "type": series.event_type or target.event_type,
        "subject": subject,
        "time": start.isoformat().replace("+00:00", "Z"),
        "data": {"metric": sample.name, "kind": series.kind, "value": str(value), "labels": sample.labels},
    }


def _interval_start(at: datetime, interval: float) -> datetime:
    seconds = math.floor(at.timestamp() / interval) * interval
    return datetime.fromtimestamp(seconds, UTC)


def collect_once(target: Target, http: httpx.Client, client: Client, state: State, at: datetime | None = None) -> int:
    """One reading of ``target``: its events recorded exactly once, however the process dies.

    1. A reading left pending by a crash is recorded again first (same events, same ids).
    2. Scrape; the new events and readings are saved as pending (fsynced) before recording,
    3. recorded (with a spool: on disk when ``submit`` returns),
    4. then committed: the readings become the last ones, pending is cleared.
    """
    mine = state.get(target.key) or {"last": {}, "pending": None}
    resent = _commit(target, client, state, mine) if mine["pending"] is not None else 0
    events, readings = reading_events(target, scrape(http, target.url), mine["last"], at or datetime.now(UTC))
    mine["pending"] = {"events": events, "readings": readings}
    state.put(target.key, mine)
    state.save()
    return resent + _commit(target, client, state, mine)


def _commit(target: Target, client: Client, state: State, mine: dict[str, Any]) -> int:
    pending = mine["pending"]
    n = sum(1 for event in pending["events"] if client.submit(event))
    mine["last"].update(pending["readings"])
    mine["pending"] = None
    state.put(target.key, mine)
    state.save()
    return n
