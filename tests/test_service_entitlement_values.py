"""The entitlement value service: values now and in the past, checks and history, on the
in-memory catalog with a scripted usage port (the live counters are another service's)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from meterline.adapters.memory.customers import MemoryCustomers
from meterline.adapters.memory.entitlements import MemoryEntitlements, MemoryFeatures
from meterline.adapters.memory.meters import MemoryMeters
from meterline.domain.clock import FixedClock, to_us
from meterline.domain.customers.model import CustomerInput
from meterline.domain.entitlements.credit import Segment
from meterline.domain.entitlements.model import Entitlement, EntitlementInput, Feature, FeatureInput, UsagePeriodInput
from meterline.domain.entitlements.value import Value
from meterline.domain.errors import InvalidInput, NotFound
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery, QueryLimits
from meterline.domain.periods import Period
from meterline.services.entitlement_values import EntitlementValueService
from meterline.services.entitlements import EntitlementService

NS = "ns"
NOW = to_us(datetime(2026, 3, 18, 9, 30, 20, tzinfo=UTC))
MAR = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))


class Usage:
    """A usage port that answers from fixed values and records the queries it was given."""

    def __init__(self) -> None:
        self.metered: set[str] = set()
        self.queries: list[MeterQuery] = []
        self.burndowns: list[tuple[int, int]] = []
        self.ent: Entitlement | None = None

    def customer_key(self, namespace: str, key_or_subject: str) -> str | None:
        return "acme" if key_or_subject in ("acme", "acme-svc") else None

    def value(
        self, namespace: str, customer_key: str, feature_key: str, *, project: bool = True
    ) -> tuple[Entitlement | None, Value | None]:
        if feature_key != "api":
            return None, None
        return self.ent, Value(True, usage=Decimal(90), allowance=Decimal(100), balance=Decimal(10), period=MAR)

    def period_at(self, ent: Entitlement, t_us: int) -> Period | None:
        return MAR if ent.id in self.metered else None

    def value_at(self, ent: Entitlement, t_us: int) -> Value | None:
        return Value(True, usage=Decimal(t_us % 7)) if ent.id in self.metered else None

    def segments(self, ent: Entitlement, start_us: int, end_us: int) -> list[Segment] | None:
        """One segment over the range: a grant of 100, of which 30 were used."""
        self.burndowns.append((start_us, end_us))
        if ent.id not in self.metered:
            return None
        return [Segment(start_us, end_us, {"g": Decimal(100)}, Decimal(0), Decimal(30), usages=[("g", Decimal(30))])]

    def windows(self, ent: Entitlement, query: MeterQuery) -> list[tuple[int, int, Decimal]] | None:
        self.queries.append(query)
        if ent.id not in self.metered:
            return None
        start_us = (query.start or 0) * 1_000_000
        return [(start_us, start_us + 3_600_000_000, Decimal(30))]


@pytest.fixture
def setup() -> tuple[EntitlementValueService, Usage, Entitlement]:
    clock = FixedClock(NOW)
    customers, features, ents = MemoryCustomers(clock.now_us), MemoryFeatures(), MemoryEntitlements()
    meters = MemoryMeters(clock.now_us)
    meters.create(NS, MeterSpec("calls", "api", Aggregation.SUM, value_property="$.n"))
    customers.create(NS, CustomerInput("acme"))
    features.add(Feature("f1", NS, FeatureInput("api", "API", meter_slug="calls"), NOW))
    service = EntitlementService(ents, features, customers, meters, clock)
    spec = EntitlementInput(
        "metered", feature_key="api", usage_period=UsagePeriodInput("MONTH"), issue_after_reset=Decimal(100)
    )
    ent = service.create(NS, "acme", spec)
    usage = Usage()
    usage.metered.add(ent.id)
    usage.ent = ent
    return EntitlementValueService(service, usage, clock, QueryLimits()), usage, ent


def test_values_now_and_in_the_past(setup: tuple[EntitlementValueService, Usage, Entitlement]) -> None:
    values, usage, ent = setup
    assert values.value(NS, "acme", "api").balance == Decimal(10)
    assert values.value(NS, "acme", ent.id, 7_000_003).usage == Decimal(3)
    usage.metered.clear()  # its meter is gone
    with pytest.raises(NotFound) as err:
        values.value(NS, "acme", "api", 7)
    assert err.value.code == "meter_not_found"
    assert values.current_period(ent) is None


def test_a_check_is_allowed_only_if_every_feature_is(setup: tuple[EntitlementValueService, Usage, Entitlement]) -> None:
    values, _, _ = setup
    ok = values.check(NS, "acme-svc", [("api", Decimal(10))])
    assert (ok.customer, ok.allowed, [f.allowed for f in ok.features]) == ("acme", True, [True])
    over = values.check(NS, "acme", [("api", Decimal(5)), ("sso", Decimal(0)), ("api", Decimal(11))])
    assert not over.allowed and [f.allowed for f in over.features] == [True, False, False]
    assert over.features[1].denial is not None
    for customer, features, code in (
        (None, [("api", Decimal(1))], "invalid_check_request"),
        ("acme", [], "invalid_check_request"),
    ):
        with pytest.raises(InvalidInput) as err:
            values.check(NS, customer, features)
        assert err.value.code == code
    with pytest.raises(NotFound):
        values.check(NS, "globex", [("api", Decimal(1))])


def test_history_defaults_to_the_current_period_through_this_minute(
    setup: tuple[EntitlementValueService, Usage, Entitlement],
) -> None:
    values, usage, _ = setup
    windows, periods = values.history(NS, "acme", "api", None, None, "DAY", "Asia/Kolkata")
    [query] = usage.queries
    assert query.start == to_us(MAR.start) // 1_000_000
    assert query.end == to_us(datetime(2026, 3, 18, 9, 31, tzinfo=UTC)) // 1_000_000
    assert (query.start_us, query.end_us) == (None, None)
    assert str(query.tz) == "Asia/Kolkata"
    assert [(w.usage, w.balance_at_start) for w in windows] == [(Decimal(30), Decimal(100))]
    # the burndown of the same range: the period's start through this minute
    assert usage.burndowns == [(MAR.start_us, to_us(datetime(2026, 3, 18, 9, 31, tzinfo=UTC)))]
    assert [(p.start_us, p.usage, p.balance_at_start, p.balances_at_end) for p in periods] == [
        (MAR.start_us, Decimal(30), Decimal(100), {"g": Decimal(70)})
    ]
    with pytest.raises(InvalidInput) as err:
        values.history(NS, "acme", "api", None, None, "WEEK", "UTC")
    assert err.value.code == "invalid_window_size"
    usage.metered.clear()
    with pytest.raises(InvalidInput) as gone:
        values.history(NS, "acme", "api", None, None, "DAY", "UTC")
    assert gone.value.code == "invalid_entitlement"
