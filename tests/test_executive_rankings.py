"""The executive view's top customers and feature adoption on a real SQLite store equal a
brute-force fold over the ledger's events: every aggregation, in UTC, Asia/Kathmandu (+05:45)
and America/New_York, by day, week and month, with late events, customers owning several
subjects, subjects no customer claims, a customer without usage and ties. Both ways are
checked: ranked by the store in SQL (``adapters.sqlite.ranking``: integral values of COUNT,
SUM, MIN and MAX) and ranked by the service from the meter query's rows (every other meter,
and every meter when the store offers no ranking). Per-subject reads over one window may cover
a ragged edge by its whole UTC month minus the part outside the window, skip row sets the
meter-wide summaries show empty, read a ragged edge as its whole UTC day minus the rest of the
day, and read sparse rollup and day sets by time (``adapters.sqlite.per_subject``): each is
exercised here and must not change a number."""

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
from meterline.adapters.sqlite import ranking as sqlite_ranking
from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.summaries import DAY
from meterline.api.dashboard.executive import span_from
from meterline.bootstrap import Catalog, attach_counting, billing_services, catalog
from meterline.config import load_config
from meterline.domain.clock import FixedClock
from meterline.domain.customers.model import CustomerInput
from meterline.domain.meters.model import Aggregation, Meter, MeterSpec
from meterline.domain.meters.query import SUBJECT, MeterQuery, QueryLimits
from meterline.services.aggregation import Aggregator
from meterline.services.insights import ADDITIVE, Insights, Span

FIRST_EVENT = int(datetime(2026, 1, 3, 7, tzinfo=UTC).timestamp())
SUBJECTS = [f"s{i}" for i in range(14)]
CUSTOMERS = {
    "acme": ["s0", "s1", "s2"],
    "globex": ["s3"],
    "s4": [],
    "initech": ["s5", "s6"],
    "idle": ["nothing"],
    "tie-b": ["tb"],
    "tie-a": ["ta"],
}
"""Customer key -> the subjects it claims (``s4`` is keyed by its subject; s7 .. s13 are
nobody's; ``idle`` has no usage; ``tie-a`` and ``tie-b`` have the same events)."""
WHOLE = (Aggregation.SUM, Aggregation.MIN, Aggregation.MAX)
"""Aggregations also metered over an integral property (``n``): the store ranks those itself."""
RANKED_BY_STORE = {"count", "sum-whole", "min-whole", "max-whole"}
"""The meters whose values are all integral: ranked in SQL; AVG and LATEST by the service, and
the others when a value in the range is fractional."""
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
        whole = rng.randrange(-300, 5000) if i % 5 else rng.randrange(0, 3)  # small values tie
        out.append(
            {
                "specversion": "1.0",
                "id": f"x{seed}-{i}",
                "source": "s",
                "type": rng.choice(("t", "t", "t", "other")),
                "subject": SUBJECTS[min(int(rng.paretovariate(0.9)) - 1, len(SUBJECTS) - 1)],
                "time": datetime.fromtimestamp(t / 1e6, UTC).isoformat().replace("+00:00", "Z"),
                "data": {"v": value, "n": whole, "g": rng.choice(("x", "y"))},
            }
        )
    return out


def edge_event(subject: str, time: str, key: str = "") -> dict[str, Any]:
    data = {"v": 7, "n": 7, "g": "x"}
    return {"specversion": "1.0", "id": key or subject, "source": "s", "type": "t", "subject": subject, "time": time,
            "data": data}  # fmt: skip


def whole_spec(aggregation: Aggregation) -> MeterSpec:
    slug = f"{aggregation.value.lower()}-whole"
    return MeterSpec(slug=slug, event_type="t", aggregation=aggregation, value_property="$.n", group_by={"g": "$.g"})


Site = tuple[EmbeddedBackend, dict[str, Insights], list[Meter], Catalog]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Every aggregation's meter (and SUM, MIN and MAX over integral values), the customers,
    and events in three batches (the later ones reaching back in time: late events), aggregated
    in small chunks; the dashboard's Insights over the store's services, as ``api.dashboard``
    builds them (``store``), and without the store's ranking (``service``)."""
    path: Path = tmp_path_factory.mktemp("executive-rankings")
    b = opened(path)
    clock = FixedClock(NOW_US)
    config = load_config(None, {"storage": {"data_dir": path, "fsync": "normal"}})
    try:
        meters = [b.meters.create("default", spec(a)) for a in AGGREGATIONS]
        meters += [b.meters.create("default", whole_spec(a)) for a in WHOLE]
        b.customers.upsert_many(
            "default", [CustomerInput(key=k, name=k.title(), subject_keys=s) for k, s in CUSTOMERS.items()]
        )
        first = sorted(events(1200, 1), key=lambda e: str(e["time"]))
        send(b, first[:700])
        send(b, events(400, 2))
        send(b, first[700:])
        send(b, [edge_event("edge-only", "2026-03-31T18:00:00Z"), edge_event("late-only", "2026-03-31T20:00:00Z")])
        ties = [(s, t) for s in ("ta", "tb") for t in ("2026-01-20T10:00:00Z", "2026-03-02T04:00:00Z")]
        send(b, [edge_event(s, t, f"{s}-{t}") for s, t in ties])
        Aggregator(b.ledger, b.usage, cap=100, chunk=300).drain()
        c = catalog(config, clock, b, attach_counting(b, clock), lambda: None)
        invoices = billing_services(config, b, clock).invoices
        ways = {
            "store": Insights(c.meters, c.usage, c.customers, c.features, invoices, QueryLimits(), c.ranking),
            "service": Insights(c.meters, c.usage, c.customers, c.features, invoices, QueryLimits()),
        }
        yield b, ways, meters, c
    finally:
        b.close()


def brute_force(entries: list[Any], meter: Meter, span: Span) -> dict[str, Decimal]:
    """Each subject's value over the span's whole range, from the counting ledger entries."""
    starts = span.boundaries()
    field = (meter.spec.value_property or "$.v")[2:]
    picked: dict[str, list[tuple[int, int, Decimal]]] = defaultdict(list)
    for seq, type_, subject, time_us, data in entries:
        if type_ == "t" and starts[0] <= time_us // 1_000_000 < starts[-1]:
            picked[subject].append((time_us, seq, Decimal(str(data[field]))))
    return {s: _final(meter.spec.aggregation, values) for s, values in picked.items()}


def owners() -> dict[str, str]:
    out = {s: k for k, subjects in CUSTOMERS.items() for s in subjects}
    out.update({k: k for k in CUSTOMERS})
    return out


def expected(values: dict[str, Decimal], meter: Meter, limit: int) -> tuple[list[tuple[str, Decimal]], set[str]]:
    """The top ``limit`` (per customer where values add up, else per subject; ties by name;
    zeros of the first ``limit`` left out) and the customers (or unclaimed subjects) with usage."""
    who = owners()
    totals: dict[str, Decimal] = defaultdict(Decimal)
    additive = meter.spec.aggregation in ADDITIVE
    for subject, value in values.items():
        totals[who.get(subject, subject) if additive else subject] += value
    top = [(n, v) for n, v in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit] if v]
    return top, {who.get(s, s) for s, v in values.items() if v}


@pytest.mark.parametrize("way", ["store", "service"])
@pytest.mark.parametrize(
    ("ratio", "day_ratio", "short_edge"),
    [
        (per_subject.BY_TIME, per_subject.DAYS_BY_TIME, per_subject.SHORT_EDGE),
        (0, 10**9, 0),
        (10**9, 0, DAY),
    ],
    ids=["chosen", "by-time", "per-subject"],
)
@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu", "America/New_York"])
def test_top_customers_and_adoption_equal_the_ledger(
    site: Site,
    zone: str,
    ratio: int,
    day_ratio: int,
    short_edge: int,
    way: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also with every rollup and day set read by time (``rollups_by_time``,
    ``summaries_days_by_time``) and every ragged edge of a SUM or COUNT read as its whole UTC
    day minus the rest of the day (``per_subject.short_edges``), and with none of these (a set
    holding events is read per subject, an edge from its own rollups), beside the choice by
    :func:`per_subject.by_time`, :func:`per_subject.days_by_time` and
    :data:`per_subject.SHORT_EDGE`; ranked with 3, 10 and 100 entries (a cut inside a tie;
    everyone)."""
    b, ways, meters, c = site
    insights = ways[way]
    signs: list[int] = []
    empty_skipped: list[bool] = []
    read_by_time: list[bool] = []
    by_store: dict[str, list[bool]] = defaultdict(list)
    days: list[int] = []
    statement, occupied, by_time = per_subject.fold_statement, sqlite_meters.occupied, per_subject.by_time
    days_by_time, read_days_by_time = per_subject.days_by_time, list[bool]()
    rank = sqlite_ranking.ranked

    def noted_by_time(*args: Any) -> bool:
        chosen = by_time(*args)
        read_by_time.append(chosen)
        return chosen

    def noted_days_by_time(*args: Any) -> bool:
        chosen = days_by_time(*args)
        read_days_by_time.append(chosen)
        return chosen

    monkeypatch.setattr(per_subject, "BY_TIME", ratio)
    monkeypatch.setattr(per_subject, "by_time", noted_by_time)
    monkeypatch.setattr(per_subject, "DAYS_BY_TIME", day_ratio)
    monkeypatch.setattr(per_subject, "days_by_time", noted_days_by_time)
    monkeypatch.setattr(per_subject, "SHORT_EDGE", short_edge)
    swapped: list[bool] = []
    short_edges = per_subject.short_edges

    def noted_short_edges(a: int, b: int) -> list[tuple[int, int, int]]:
        ranges = short_edges(a, b)
        swapped.append(len(ranges) > 1)
        return ranges

    monkeypatch.setattr(sqlite_meters, "short_edges", noted_short_edges)

    def noted_statement(*args: Any) -> Any:
        signs.extend(part[5] for part in args[3])
        return statement(*args)

    def noted_occupied(*args: Any) -> Any:
        kept = occupied(*args)
        empty_skipped.append(len(kept) < len(args[2]))
        return kept

    def noted_rank(conn: Any, meter: Meter, *args: Any) -> Any:
        ranks = rank(conn, meter, *args)
        if days[-1] > 1:  # a day off UTC holds no whole UTC day: read as the meter query reads it
            by_store[meter.slug].append(ranks is not None)
        return ranks

    monkeypatch.setattr(per_subject, "fold_statement", noted_statement)
    monkeypatch.setattr(sqlite_meters, "occupied", noted_occupied)
    monkeypatch.setattr(sqlite_ranking, "ranked", noted_rank)
    entries = counting(b)
    for params in CASES:
        span, _ = span_from({**params, "tz": zone}, NOW_US)
        starts = span.boundaries()
        days.append((starts[-1] - starts[0]) // 86_400)
        query = MeterQuery(start=starts[0], end=starts[-1], tz=span.tz, group_by=(SUBJECT,), limits=QueryLimits())
        for limit in (3, 10, 100):
            rankings = insights.rankings("default", span, limit)
            used: dict[str, set[str]] = {}
            for meter in meters:
                values = brute_force(entries, meter, span)
                if way == "service":  # what the service ranks: the meter query's rows per subject
                    _, rows = c.usage.query("default", meter.slug, query)
                    assert {row.subject: row.value for row in rows} == values, (meter.slug, params)
                want, used[meter.slug] = expected(values, meter, limit)
                got = [(r.name, r.value) for r in insights.top_customers(rankings, meter, limit)]
                assert got == want, (meter.slug, params, limit)
            population = set(CUSTOMERS) | set().union(*used.values())
            adoption = {a.meter: (a.customers, a.population) for a in insights.adoption("default", rankings)}
            assert adoption == {slug: (len(users), len(population)) for slug, users in used.items()}, params
            assert "idle" in population and adoption["count"][0] < len(population)  # not everyone used it
    assert -1 in signs  # a ragged edge was read as its UTC month minus the part outside the window
    assert any(empty_skipped)  # a range before the first event read nothing per subject there
    if way == "store":  # integral values ranked in SQL; fractional ones, AVG and LATEST by the service
        assert all(all(by_store[slug]) for slug in RANKED_BY_STORE)
        assert not any(by_store["avg"] + by_store["latest"]) and not all(by_store["sum"])
    else:
        assert not by_store
    if ratio == 0:  # in UTC whole days: no rollup set to read
        assert all(read_by_time) and (zone == "UTC" or read_by_time)
    if ratio == 10**9 and zone != "UTC":
        assert False in read_by_time  # an edge holding events was read per subject
    if day_ratio == 10**9:  # a partial month's day rows were read by time
        assert read_days_by_time and all(read_days_by_time)
    if day_ratio == 0:
        assert read_days_by_time and not any(read_days_by_time)
    if short_edge == 0 and zone != "UTC":  # an edge was read as its whole day minus the rest
        assert any(swapped)
    if short_edge == DAY or zone == "UTC":  # every edge from its own rollups (UTC has none)
        assert swapped and not any(swapped)


def test_ties_are_ranked_by_name(site: Site) -> None:
    """``tie-a`` and ``tie-b`` have the same events: every meter ranks them side by side, by
    name, whichever ranks (their values lie in the middle of the others, so a limit cuts them)."""
    _, ways, meters, _ = site
    span, _ = span_from({"grain": "month", "from": "2026-01-01", "to": "2026-03-31"}, NOW_US)
    for way, insights in ways.items():
        rankings = insights.rankings("default", span, 100)
        for meter in meters:
            names = [r.name for r in insights.top_customers(rankings, meter, 100)]
            a, b = ("tie-a", "tie-b") if meter.spec.aggregation in ADDITIVE else ("ta", "tb")
            assert names.index(b) == names.index(a) + 1, (way, meter.slug)


def test_the_subtracted_sets_leave_out_subjects_without_usage_in_the_window(site: Site) -> None:
    """Kathmandu's March 31 ends at 18:15 UTC. ``late-only``'s one event (20:00 UTC) is in the
    UTC month of March but not in the window: the month row minus the subtracted hours leaves
    it no usage, and it gets no value at all (as when the window is read directly), not a 0:
    it is neither ranked nor counted as a user; ``edge-only`` (18:00 UTC) is in the window."""
    b, ways, meters, c = site
    span, _ = span_from({"grain": "month", "from": "2026-01-01", "to": "2026-03-31", "tz": "Asia/Kathmandu"}, NOW_US)
    starts = span.boundaries()
    query = MeterQuery(start=starts[0], end=starts[-1], tz=span.tz, group_by=(SUBJECT,), limits=QueryLimits())
    for meter in meters:
        _, rows = c.usage.query("default", meter.slug, query)
        values = {row.subject: row.value for row in rows}
        assert "late-only" not in values
        assert values["edge-only"] == (1 if meter.spec.aggregation is Aggregation.COUNT else 7)
        assert values == brute_force(counting(b), meter, span)
    for insights in ways.values():
        rankings = insights.rankings("default", span, 100)
        for meter in meters:
            ranks = rankings.by_meter[meter.slug]
            assert "edge-only" in ranks.unowned and "late-only" not in ranks.unowned
            assert "late-only" not in {name for name, _ in ranks.top}


def test_a_customer_total_past_the_native_integers_is_added_exactly(tmp_path: Path) -> None:
    """Three subjects of one customer, each with a value just under 2**62 (kept as an integer):
    their sum passes 2**63, which SQLite's native ``sum`` refuses; the store then leaves the
    ranking to the service, which adds exactly."""
    b = opened(tmp_path)
    clock = FixedClock(NOW_US)
    config = load_config(None, {"storage": {"data_dir": tmp_path, "fsync": "normal"}})
    try:
        b.meters.create("default", whole_spec(Aggregation.SUM))
        b.customers.upsert_many("default", [CustomerInput(key="big", name="Big", subject_keys=["b1", "b2", "b3"])])
        huge = 2**62 - 1
        sent = [edge_event(s, "2026-02-10T10:00:00Z") for s in ("b1", "b2", "b3", "small")]
        for e in sent:
            e["data"]["n"] = huge if e["subject"] != "small" else 5
        send(b, sent)
        Aggregator(b.ledger, b.usage, cap=100, chunk=300).drain()
        c = catalog(config, clock, b, attach_counting(b, clock), lambda: None)
        assert c.ranking is not None
        invoices = billing_services(config, b, clock).invoices
        insights = Insights(c.meters, c.usage, c.customers, c.features, invoices, QueryLimits(), c.ranking)
        span, _ = span_from({"grain": "month", "from": "2026-01-01", "to": "2026-03-31"}, NOW_US)
        starts = span.boundaries()
        query = MeterQuery(start=starts[0], end=starts[-1], tz=span.tz, group_by=(SUBJECT,), limits=QueryLimits())
        meter = c.meters.list("default")[0]
        assert c.ranking.rank(meter, query, 10) is None  # refused natively: not a wrong number
        rankings = insights.rankings("default", span)
        assert [(r.name, r.value) for r in insights.top_customers(rankings, meter)] == [
            ("big", Decimal(3 * huge)),
            ("small", Decimal(5)),
        ]
        assert [(a.customers, a.population) for a in insights.adoption("default", rankings)] == [(2, 2)]
    finally:
        b.close()
