"""The credit engine (domain.entitlements.credit) on hand-computed scenarios."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from meterline.domain.clock import to_us
from meterline.domain.entitlements.credit import Credit, Snapshot, balance_at, run
from meterline.domain.entitlements.model import GrantInput, UsagePeriodInput, validate_grant
from meterline.domain.errors import InvalidInput
from meterline.domain.periods import recurrence

D = Decimal
H = 3_600_000_000
T0 = to_us(datetime(2026, 3, 1, tzinfo=UTC))


def usage_at(events: dict[int, Decimal]):  # type: ignore[no-untyped-def]
    """Usage of [a, b) from point events (hours after T0)."""
    return lambda a, b: sum((v for h, v in events.items() if a <= T0 + h * H < b), D(0))


def credit(gid: str, amount: int, *, prio: int = 1, eff: int = 0, exp: int | None = None, **kw: object) -> Credit:
    return Credit(gid, D(amount), prio, T0 + eff * H, None if exp is None else T0 + exp * H, T0, **kw)  # type: ignore[arg-type]


def balances(credits: list[Credit], snap: Snapshot) -> dict[str, Decimal]:
    return balance_at(credits, snap)[1]


def test_the_grant_expiring_first_burns_first_and_its_rest_is_lost() -> None:
    a, b = credit("a", 100, exp=10), credit("b", 100)
    end, segs = run([a, b], Snapshot(T0, {}), (), T0 + 20 * H, usage_at({1: D(80)}), preserve_overage=False)
    assert balances([a, b], end) == {"b": D(100)}
    assert [(s.start_us - T0) // H for s in segs] == [0, 10]
    assert segs[0].usages == [("a", D(80))]


def test_lower_priority_number_burns_first_whatever_the_expiry() -> None:
    a, b = credit("a", 100, prio=2, exp=10), credit("b", 100, prio=1)
    end, _ = run([a, b], Snapshot(T0, {}), (), T0 + 20 * H, usage_at({1: D(80)}), preserve_overage=False)
    assert balances([a, b], end) == {"b": D(20)}


def test_overage_is_paid_by_a_grant_that_becomes_effective_later() -> None:
    a, b = credit("a", 10), credit("b", 50, eff=5)
    end, segs = run([a, b], Snapshot(T0, {}), (), T0 + 8 * H, usage_at({1: D(30), 6: D(5)}), preserve_overage=False)
    assert segs[0].overage == D(20)
    assert (end.overage, balances([a, b], end)) == (D(0), {"a": D(0), "b": D(25)})


def test_a_void_mid_period_loses_the_voided_grants_balance() -> None:
    a = credit("a", 100, voided_us=T0 + 5 * H)
    b = credit("b", 30, exp=100)
    events = usage_at({1: D(10), 6: D(50)})
    end, _ = run([a, b], Snapshot(T0, {}), (), T0 + 8 * H, events, preserve_overage=False)
    # b expires first so it burns first: 10 from b; after the void only b's 20 is left for 50
    assert (balances([a, b], end), end.overage) == ({"b": D(0)}, D(30))


def test_rollover_keeps_the_balance_between_min_and_max() -> None:
    a = credit("a", 100, max_rollover=D(50), min_rollover=D(10))
    b = credit("b", 100, prio=2, max_rollover=D(100), min_rollover=D(95))
    reset = T0 + 10 * H
    end, segs = run([a, b], Snapshot(T0, {}), (reset,), reset, usage_at({1: D(130)}), preserve_overage=False)
    # a: 0 left -> max(0, 10) = 10; b: 70 left -> min(100, max(70, 95)) = 95
    assert balances([a, b], end) == {"a": D(10), "b": D(95)}
    assert [s.rollover for s in segs] == [False, True, False]


def test_preserved_overage_burns_first_from_the_rolled_over_balances() -> None:
    a = credit("a", 100, max_rollover=D(100), min_rollover=D(100))
    reset = T0 + 10 * H
    events = usage_at({1: D(130), 11: D(20)})
    end, _ = run([a], Snapshot(T0, {}), (reset,), T0 + 12 * H, events, preserve_overage=True)
    assert (balances([a], end), end.overage) == ({"a": D(50)}, D(0))
    end, _ = run([a], Snapshot(T0, {}), (reset,), T0 + 12 * H, events, preserve_overage=False)
    assert (balances([a], end), end.overage) == ({"a": D(80)}, D(0))


def test_a_recurring_grant_refills_at_each_recurrence() -> None:
    rec = recurrence("DAY", datetime(2026, 3, 1, tzinfo=UTC), "UTC")
    a = credit("a", 10, recurrence=rec)
    events = usage_at({1: D(4), 25: D(3), 49: D(12)})
    end, segs = run([a], Snapshot(T0, {}), (), T0 + 50 * H, events, preserve_overage=False)
    assert [s.balance_at_start for s in segs] == [D(10), D(10), D(10)]
    assert (balances([a], end), end.overage) == ({"a": D(0)}, D(2))


def test_grant_rollover_amounts_and_recurrences_are_validated() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    day = {"duration": "DAY", "count": 1}
    validate_grant(GrantInput(D(5), at, day, max_rollover_amount=D(3), min_rollover_amount=D(4)))  # as OpenMeter
    for bad in (
        GrantInput(D(5), at, day, max_rollover_amount=D(-1)),
        GrantInput(D(5), at, day, min_rollover_amount=D("NaN")),
        GrantInput(D(5), at, day, recurrence=UsagePeriodInput("PT1M")),
        GrantInput(D(5), at, day, recurrence=UsagePeriodInput("sometimes")),
    ):
        with pytest.raises(InvalidInput):
            validate_grant(bad)
