"""The contracts of what billing reads from outside its stores: period usage (every
aggregation, group values, window bounds, several customers in one call) and the directory of
customers and meters, run against every adapter."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from contract.billing_kit import APRIL, MARCH, MAY, NS, Kit, open_kit
from meterline.domain.billing.records import UsageAsk
from meterline.domain.errors import NotFound
from meterline.domain.meters.model import Aggregation, MeterSpec

ADAPTERS = ["sqlite", "memory"]
DAY = 86_400_000_000
METERS = {
    "total": (Aggregation.SUM, "$.n"),
    "hits": (Aggregation.COUNT, None),
    "peak": (Aggregation.MAX, "$.n"),
    "low": (Aggregation.MIN, "$.n"),
    "last": (Aggregation.LATEST, "$.n"),
    "mean": (Aggregation.AVG, "$.n"),
    "users": (Aggregation.UNIQUE_COUNT, "$.user"),
}


@pytest.fixture(params=ADAPTERS)
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    yield from open_kit(request.param, tmp_path, now_us=MAY)


def ev(i: int, subject: str, time: str, n: str, region: str, user: str) -> dict[str, object]:
    return {"id": f"e{i}", "type": "req", "subject": subject, "time": time,
            "data": {"n": n, "region": region, "user": user}}  # fmt: skip


@pytest.fixture
def usage(kit: Kit) -> Kit:
    for slug, (aggregation, value) in METERS.items():
        kit.meter(MeterSpec(slug, "req", aggregation, value_property=value, group_by={"region": "$.region"}))
    kit.customer("acme", "a1", "a2")
    kit.customer("bravo", "b1")
    kit.events(
        ev(1, "a1", "2026-03-02T10:00:00Z", "5", "eu", "u1"),
        ev(2, "a2", "2026-03-02T11:00:00Z", "7", "us", "u2"),
        ev(3, "a1", "2026-03-10T00:00:00Z", "1.5", "eu", "u1"),
        ev(4, "a1", "2026-02-28T23:59:00Z", "100", "eu", "u3"),  # before the window
        ev(5, "a2", "2026-04-01T00:00:00Z", "100", "us", "u4"),  # at its end: the next window's
        ev(6, "b1", "2026-03-05T08:30:00Z", "123456789012345678.000000000000000001", "eu", "u9"),
    )
    return kit


def read(kit: Kit, *asks: UsageAsk) -> list[dict[object, Decimal]]:
    meters = {m.slug: m for m in kit.stores.directory.meters(NS)}
    return kit.stores.usage.usage(meters, list(asks))  # type: ignore[return-value]


def ask(subjects: tuple[str, ...], *queries: tuple[str, str | None], start: int = MARCH, end: int = APRIL) -> UsageAsk:
    return UsageAsk(subjects, start, end, queries)


def test_every_aggregation_over_a_customers_subjects_in_the_window(usage: Kit) -> None:
    [got] = read(usage, ask(("a1", "a2"), *((slug, None) for slug in METERS)))
    assert got == {
        ("total", None): Decimal("13.5"),
        ("hits", None): Decimal(3),
        ("peak", None): Decimal(7),
        ("low", None): Decimal("1.5"),
        ("last", None): Decimal("1.5"),
        ("mean", None): Decimal("4.5"),
        ("users", None): Decimal(2),
    }


def test_totals_per_group_value(usage: Kit) -> None:
    [got] = read(usage, ask(("a1", "a2"), ("total", "region"), ("hits", "region"), ("peak", "region")))
    assert got == {
        ("total", (("region", "eu"),)): Decimal("6.5"),
        ("total", (("region", "us"),)): Decimal(7),
        ("hits", (("region", "eu"),)): Decimal(2),
        ("hits", (("region", "us"),)): Decimal(1),
        ("peak", (("region", "eu"),)): Decimal(5),
        ("peak", (("region", "us"),)): Decimal(7),
    }


def test_customers_asked_together_get_their_own_exact_figures(usage: Kit) -> None:
    acme, bravo, nobody = read(
        usage,
        ask(("a1", "a2"), ("total", None), ("users", None)),
        ask(("b1",), ("total", None), ("users", None)),
        ask(("zz",), ("total", None), ("users", None)),
    )
    assert acme == {("total", None): Decimal("13.5"), ("users", None): Decimal(2)}
    assert bravo == {("total", None): Decimal("123456789012345678.000000000000000001"), ("users", None): Decimal(1)}
    assert nobody == {("total", None): Decimal(0), ("users", None): Decimal(0)}  # totals are 0, never missing


def test_window_bounds_are_start_inclusive_end_exclusive(usage: Kit) -> None:
    before, april, day = read(
        usage,
        ask(("a1",), ("total", None), start=MARCH - DAY, end=MARCH),
        ask(("a2",), ("total", None), ("total", "region"), start=APRIL, end=MAY),
        ask(("a1", "a2"), ("total", None), start=MARCH + DAY, end=MARCH + 2 * DAY),
    )
    assert before == {("total", None): Decimal(100)}
    assert april == {("total", None): Decimal(100), ("total", (("region", "us"),)): Decimal(100)}
    assert day == {("total", None): Decimal(12)}


def test_the_directory_knows_live_customers_and_meters(usage: Kit) -> None:
    directory = usage.stores.directory
    acme = directory.customer(NS, "acme")
    assert directory.customer(NS, acme.id) == acme
    assert acme.subjects == ("a1", "a2")
    everyone = directory.customers(NS)
    assert {c.key for c in everyone.values()} == {"acme", "bravo"}
    assert everyone[acme.id].subjects == ("a1", "a2")
    assert sorted(m.slug for m in directory.meters(NS)) == sorted(METERS)
    assert directory.meters("other") == [] and directory.customers("other") == {}
    with pytest.raises(NotFound) as err:
        directory.customer(NS, "zulu")
    assert err.value.code == "customer_not_found"
