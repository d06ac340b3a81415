"""An entitlement's usage history per window (the burndown per segment is the credit engine's,
``domain.entitlements.credit``)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class WindowUsage:
    start: int  # epoch microseconds
    end: int
    usage: Decimal
    balance_at_start: Decimal
    """The entitlement's balance when the window began (the credit engine's, less what the
    usage of its segment before the window burnt)."""
