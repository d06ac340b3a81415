"""An entitlement's usage history: per window, and per usage period (the burndown).

Pure: it takes the usage of each window with the period that window falls in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

from meterline.domain.periods import Period

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class WindowUsage:
    start: int  # epoch microseconds
    end: int
    usage: Decimal
    balance_at_start: Decimal  # what was left of the period's allowance when the window began


@dataclass(frozen=True, slots=True)
class PeriodUsage:
    period: Period
    allowance: Decimal
    usage: Decimal
    carried: Decimal = ZERO
    """Overage the period inherited (``preserveOverageAtReset``): it uses the allowance first."""

    @property
    def overage(self) -> Decimal:
        return max(self.usage + self.carried - self.allowance, ZERO)

    @property
    def balance_at_start(self) -> Decimal:
        return max(self.allowance - self.carried, ZERO)

    @property
    def balance_at_end(self) -> Decimal:
        return max(self.allowance - self.carried - self.usage, ZERO)


def burndown(
    windows: Iterable[tuple[int, int, Decimal, Period]],
    allowance: Decimal,
    carried: Callable[[Period], Decimal] = lambda period: ZERO,
) -> tuple[list[WindowUsage], list[PeriodUsage]]:
    """Windows in time order, each with its usage period: the balance at each window's start
    (usage counts from the overage the period inherited, ``carried``, again in each period)
    and the totals of each period."""
    history: list[WindowUsage] = []
    totals: dict[Period, Decimal] = {}
    owed: dict[Period, Decimal] = {}
    used, current = ZERO, None
    for start, end, usage, period in windows:
        if period != current:
            current, used = period, ZERO
            owed.setdefault(period, carried(period))
        history.append(WindowUsage(start, end, usage, max(allowance - owed[period] - used, ZERO)))
        used += usage
        totals[period] = used
    return history, [PeriodUsage(p, allowance, u, owed[p]) for p, u in totals.items()]
