"""The portal-token and meter services on in-memory adapters."""

from __future__ import annotations

from datetime import timedelta

import pytest

from meterline.adapters.memory.entitlements import MemoryFeatures
from meterline.adapters.memory.meters import MemoryMeters
from meterline.adapters.memory.portal import MemoryPortal
from meterline.domain.auth.portal import LEEWAY_S
from meterline.domain.clock import FixedClock
from meterline.domain.errors import InvalidInput, NotFound, PortalTokenInvalid
from meterline.domain.meters.model import Aggregation, Meter, MeterSpec
from meterline.services.meters import MeterService
from meterline.services.portal import PortalService

T0 = 1_772_366_400_000_000
HOUR = 3600


def portal(clock: FixedClock) -> PortalService:
    return PortalService(MemoryPortal(), clock, default_ttl=timedelta(hours=1), max_ttl=timedelta(days=1))


def test_a_token_verifies_until_invalidated_or_expired() -> None:
    clock = FixedClock(T0)
    service = portal(clock)
    token, claims = service.issue("ns", "acme", ["calls"], None)
    assert service.verify(token) == claims and claims.allows_meter("calls") and not claims.allows_meter("x")
    assert [t.id for t in service.list("ns", 10)] == [claims.token_id]
    assert service.invalidate("ns", None, "acme") == 1
    with pytest.raises(PortalTokenInvalid):
        service.verify(token)
    short, _ = service.issue("ns", "acme", None, 5)
    clock.advance(5 + LEEWAY_S)
    with pytest.raises(PortalTokenInvalid):
        service.verify(short)


def test_expires_in_must_be_within_the_configured_maximum() -> None:
    service = portal(FixedClock(T0))
    for seconds in (0, 86_401):
        with pytest.raises(InvalidInput) as err:
            service.issue("ns", "acme", None, seconds)
        assert err.value.code == "invalid_ttl"
    assert service.list("ns", 10) == []


def test_invalidate_needs_an_id_or_a_subject() -> None:
    with pytest.raises(InvalidInput) as err:
        portal(FixedClock(T0)).invalidate("ns", None, None)
    assert err.value.code == "invalid_invalidate_request"


class _Values:
    """Records what the meter service asks the usage side for."""

    def __init__(self) -> None:
        self.asked: list[tuple[object, ...]] = []

    def subjects(self, meter: Meter, start: int | None, end: int | None) -> list[str]:
        self.asked.append((meter.slug, start, end))
        return ["a"]

    def group_values(self, meter: Meter, dimension: str, start: int | None, end: int | None) -> list[str]:
        self.asked.append((meter.slug, dimension, start, end))
        return ["eu"]


def test_group_values_check_the_dimension_and_default_to_the_last_day() -> None:
    clock, values = FixedClock(T0), _Values()
    meters = MeterService(MemoryMeters(clock.now_us), values, MemoryFeatures(), clock)
    meters.create("ns", MeterSpec("calls", "api", Aggregation.COUNT, group_by={"region": "$.region"}))
    with pytest.raises(InvalidInput) as err:
        meters.group_values("ns", "calls", "tier", None, None)
    assert err.value.code == "invalid_group_by" and values.asked == []
    assert meters.group_values("ns", "calls", "region", None, None) == ["eu"]
    assert meters.group_values("ns", "calls", "region", None, 99) == ["eu"]
    assert meters.subjects("ns", "calls", None, None) == ["a"]
    now = T0 // 1_000_000
    assert values.asked == [
        ("calls", "region", now - 24 * HOUR, None),
        ("calls", "region", None, 99),
        ("calls", None, None),
    ]
    with pytest.raises(NotFound):
        meters.subjects("ns", "nope", None, None)
