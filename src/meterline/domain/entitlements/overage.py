"""Overage carried across resets (OpenMeter's ``preserveOverageAtReset``).

At each reset (a period boundary, or a reset by the API) an entitlement that preserves overage
carries what its usage exceeded into the next period, where it uses the allowance before that
period's usage does (OpenMeter's credit engine burns the rolled-over grants down with it).
Walking the periods from the last reset::

    carried(first)  = the reset's preserved overage (0 unless it preserved one)
    carried(next)   = max(carried + usage - allowance, 0) of the period before, when preserving; else 0

Pure: the usage of each period comes from ``usage_of``, the periods from ``period_at``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from meterline.domain.decimals import EXACT
from meterline.domain.entitlements.model import Entitlement, Grant
from meterline.domain.entitlements.value import ZERO, grant_total
from meterline.domain.periods import Period


def carried_overage(
    ent: Entitlement,
    grants: Sequence[Grant],
    target: Period,
    period_at: Callable[[int], Period],
    usage_of: Callable[[Period], Decimal],
) -> Decimal:
    """The overage carried into ``target`` (a usage period of ``ent`` at or after its last
    reset). Each earlier period's allowance is its ``issueAfterReset`` plus the grants active
    in it at its end."""
    first = period_at(ent.last_reset_us)
    if target.start_us < first.start_us:
        return ZERO
    carried, period = ent.reset_overage, first
    while period.start_us < target.start_us:
        if not ent.spec.preserve_overage_at_reset:
            return ZERO
        allowance = EXACT.add(ent.spec.issue_after_reset or ZERO, grant_total(grants, period, period.end_us - 1))
        owed = EXACT.subtract(EXACT.add(carried, usage_of(period)), allowance)
        carried = owed if owed > 0 else ZERO
        period = period_at(period.end_us)
    return carried
