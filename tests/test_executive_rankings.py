"""The executive view's top customers and feature adoption on a real SQLite store equal a
brute-force fold over the ledger's events: every aggregation, in UTC and in Asia/Kathmandu
(+05:45), by day, week and month, with late events, customers owning several subjects and
subjects no customer claims. Per-subject reads over one window may cover a ragged edge by its
whole UTC month minus the part outside the window, and skip row sets the meter-wide summaries
show empty (``adapters.sqlite.per_subject``): both are exercised here and must not change a
number."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_summaries import AGGREGATIONS, _final, spec
from test_summary_months import LAST, NOW_US, counting, opened, send

from meterline.adapters.sqlite import meters as sqlite_meters
from meterline.adapters.sqlite import per_subject
from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.api.dashboard.executive import span_from
from meterline.bootstrap import attach_counting, billing_services, catalog
from meterline.config import load_config
from meterline.domain.clock import FixedClock
from meterline.domain.customers.model import CustomerInput
from meterline.domain.meters.model import Aggregation, Meter
from meterline.domain.meters.query import QueryLimits
from meterline.services.aggregation import Aggregator
from meterline.services.insights import ADDITIVE, Insights, Span

FIRST_EVENT = int(datetime(2026, 1, 3, 7, tzinfo=UTC).timestamp())
SUBJECTS = [f"s{i}" for i in range(14)]
CUSTOMERS = {"acme": ["s0", "s1", "s2"], "globex": ["s3"], "s4": [], "initech": ["s5", "s6"], "idle": ["nothing"]}
"""Customer key -> the subjects it claims (``s4`` is keyed by its subject; s7 .. s13 are nobody's)."""
CASES = [
    {"grain": "month", "from": "2026-01-01", "to": "2026-03-31"},
    {"grain": "month", "from": "2025-11-01", "to": "2026-03-31"},  # starts before the first event
    {"grain": "day", "from": "2025-12-15", "to": "2026-02-10"},  # in UTC: empty days, then a month
    {"grain": "day", "from": "2026-01-05", "to": "2026-02-27"},
    {"grain": "week", "from": "2026-01-12", "to": "2026-03-08"},
    {"grain": "day", "from": "2026-03-02", "to": "2026-03-02"},  # one day
]


def events(n: int, seed: int) -> list[dict[str, Any]]:
    """Values with fractions and negatives; skewed subjects; from 2026-01-03 07:00 UTC on."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = rng.randrange(FIRST_EVENT * 1_000_000, LAST * 1_000_000)
        value = Decimal(rng.randrange(-300, 5000)) / (1 if i % 3 else 4)
        out.append(
            {
                "specversion": "1.0",
                "id": f"x{seed}-{i}",
                "source": "s",
                "type": rng.choice(("t", "t", "t", "other")),
                "subject": SUBJECTS[min(int(rng.paretovariate(0.9)) - 1, len(SUBJECTS) - 1)],
                "time": datetime.fromtimestamp(t / 1e6, UTC).isoformat().replace("+00:00", "Z"),
                "data": {"v": value, "g": rng.choice(("x", "y"))},
            }
        )
    return out


def edge_event(subject: str, time: str) -> dict[str, Any]:
    data = {"v": 7, "g": "x"}
    return {"specversion": "1.0", "id": subject, "source": "s", "type": "t", "subject": subject, "time": time,
            "data": data}  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedBackend, Insights, list[Meter]]]:
    """Every aggregation's meter, the customers, and events in three batches (the later ones
    reaching back in time: late events), aggregated in small chunks; the dashboard's Insights
    over the store's services, as ``api.dashboard`` builds them."""
    path: Path = tmp_path_factory.mktemp("executive-rankings")
    b = opened(path)
    clock = FixedClock(NOW_US)
    config = load_config(None, {"storage": {"data_dir": path, "fsync": "normal"}})
    try:
        meters = [b.meters.create("default", spec(a)) for a in AGGREGATIONS]
        b.customers.upsert_many(
            "default", [CustomerInput(key=k, name=k.title(), subject_keys=s) for k, s in CUSTOMERS.items()]
        )
        first = sorted(events(1200, 1), key=lambda e: str(e["time"]))
        send(b, first[:700])
        send(b, events(400, 2))
        send(b, first[700:])
        send(b, [edge_event("edge-only", "2026-03-31T18:00:00Z"), edge_event("late-only", "2026-03-31T20:00:00Z")])
        Aggregator(b.ledger, b.usage, cap=100, chunk=300).drain()
        c = catalog(config, clock, b, attach_counting(b, clock), lambda: None)
        insights = Insights(c.meters, c.usage, c.customers, c.features, billing_services(config, b, clock).invoices,
                            QueryLimits())  # fmt: skip
        yield b, insights, meters
    finally:
        b.close()


def brute_force(entries: list[Any], meter: Meter, span: Span) -> dict[str, Decimal]:
    """Each subject's value over the span's whole range, from the counting ledger entries."""
    starts = span.boundaries()
    picked: dict[str, list[tuple[int, int, Decimal]]] = defaultdict(list)
    for seq, type_, subject, time_us, data in entries:
        if type_ == "t" and starts[0] <= time_us // 1_000_000 < starts[-1]:
            picked[subject].append((time_us, seq, Decimal(str(data["v"]))))
    return {s: _final(meter.spec.aggregation, values) for s, values in picked.items()}


def owners() -> dict[str, str]:
    out = {s: k for k, subjects in CUSTOMERS.items() for s in subjects}
    out.update({k: k for k in CUSTOMERS})
    return out


@pytest.mark.parametrize("ratio", [per_subject.BY_TIME, 0, 10**9], ids=["chosen", "by-time", "per-subject"])
@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu"])
def test_top_customers_and_adoption_equal_the_ledger(
    site: tuple[EmbeddedBackend, Insights, list[Meter]], zone: str, ratio: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with every rollup set read by time (``rollups_by_time``) and with none (a set
    holding events is read per subject), beside the choice by :func:`per_subject.by_time`."""
    b, insights, meters = site
    signs: list[int] = []
    empty_skipped: list[bool] = []
    read_by_time: list[bool] = []
    fold, occupied, by_time = sqlite_meters.fold_subjects, sqlite_meters.occupied, per_subject.by_time

    def noted_by_time(*args: Any) -> bool:
        chosen = by_time(*args)
        read_by_time.append(chosen)
        return chosen

    monkeypatch.setattr(per_subject, "BY_TIME", ratio)
    monkeypatch.setattr(per_subject, "by_time", noted_by_time)

    def noted_fold(*args: Any) -> Any:
        signs.extend(part[5] for part in args[3])
        return fold(*args)

    def noted_occupied(*args: Any) -> Any:
        kept = occupied(*args)
        empty_skipped.append(len(kept) < len(args[2]))
        return kept

    monkeypatch.setattr(sqlite_meters, "fold_subjects", noted_fold)
    monkeypatch.setattr(sqlite_meters, "occupied", noted_occupied)
    entries, who = counting(b), owners()
    for params in CASES:
        span, _ = span_from({**params, "tz": zone}, NOW_US)
        rankings = insights.rankings("default", span)
        used: dict[str, set[str]] = {}
        for meter in meters:
            values = brute_force(entries, meter, span)
            assert rankings.by_meter[meter.slug] == values, (meter.slug, params)
            totals: dict[str, Decimal] = defaultdict(Decimal)
            additive = meter.spec.aggregation in ADDITIVE
            for subject, value in values.items():
                totals[who.get(subject, subject) if additive else subject] += value
            want = [(n, v) for n, v in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:10] if v]
            got = [(r.name, r.value) for r in insights.top_customers(rankings, meter)]
            assert got == want, (meter.slug, params)
            used[meter.slug] = {who.get(s, s) for s, v in values.items() if v}
        population = set(CUSTOMERS) | set().union(*used.values())
        adoption = {a.meter: (a.customers, a.population) for a in insights.adoption("default", rankings)}
        assert adoption == {slug: (len(users), len(population)) for slug, users in used.items()}, params
        assert "idle" in population and adoption["count"][0] < len(population)  # not everyone used it
    assert -1 in signs  # a ragged edge was read as its UTC month minus the part outside the window
    assert any(empty_skipped)  # a range before the first event read nothing per subject there
    if ratio == 0:  # in UTC whole days: no rollup set to read
        assert all(read_by_time) and (zone == "UTC" or read_by_time)
    if ratio == 10**9 and zone != "UTC":
        assert False in read_by_time  # an edge holding events was read per subject


def test_the_subtracted_sets_leave_out_subjects_without_usage_in_the_window(
    site: tuple[EmbeddedBackend, Insights, list[Meter]],
) -> None:
    """Kathmandu's March 31 ends at 18:15 UTC. ``late-only``'s one event (20:00 UTC) is in the
    UTC month of March but not in the window: the month row minus the subtracted hours leaves
    it no usage, and it gets no value at all (as when the window is read directly), not a 0;
    ``edge-only`` (18:00 UTC) is in the window."""
    b, insights, meters = site
    span, _ = span_from({"grain": "month", "from": "2026-01-01", "to": "2026-03-31", "tz": "Asia/Kathmandu"}, NOW_US)
    rankings = insights.rankings("default", span)
    for meter in meters:
        values = rankings.by_meter[meter.slug]
        assert "late-only" not in values
        assert values["edge-only"] == (1 if meter.spec.aggregation is Aggregation.COUNT else 7)
        assert values == brute_force(counting(b), meter, span)
