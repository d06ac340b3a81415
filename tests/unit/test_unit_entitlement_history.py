"""The usage history of an entitlement (domain.entitlements.history), directly."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from meterline.domain.entitlements.history import PeriodUsage, WindowUsage, burndown
from meterline.domain.periods import Period

D = Decimal
MAR = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
APR = Period(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))


def test_the_balance_restarts_in_each_period_and_never_goes_below_zero() -> None:
    windows = [(1, 2, D("40"), MAR), (2, 3, D("70.5"), MAR), (3, 4, D(5), MAR), (4, 5, D("0.25"), APR)]
    history, periods = burndown(windows, D(100))
    assert history == [
        WindowUsage(1, 2, D(40), D(100)),
        WindowUsage(2, 3, D("70.5"), D(60)),
        WindowUsage(3, 4, D(5), D(0)),
        WindowUsage(4, 5, D("0.25"), D(100)),
    ]
    assert periods == [PeriodUsage(MAR, D(100), D("115.5")), PeriodUsage(APR, D(100), D("0.25"))]
    assert (periods[0].overage, periods[0].balance_at_end) == (D("15.5"), D(0))
    assert (periods[1].overage, periods[1].balance_at_end) == (D(0), D("99.75"))


def test_no_windows_no_history() -> None:
    assert burndown([], D(5)) == ([], [])
