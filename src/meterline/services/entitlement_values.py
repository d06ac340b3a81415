"""What an entitlement is worth: its value now or at a past time, the check of quantities a
caller is about to use, and its usage history with the burndown per period."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from meterline.domain.clock import Clock
from meterline.domain.entitlements.history import PeriodUsage, WindowUsage, burndown
from meterline.domain.entitlements.model import Entitlement
from meterline.domain.entitlements.value import Value, verdict
from meterline.domain.errors import InvalidInput, NotFound
from meterline.domain.meters.edges import exact_query
from meterline.domain.meters.query import QueryLimits
from meterline.domain.meters.windows import WindowSize, zone
from meterline.domain.periods import Period
from meterline.ports.entitlement_usage import EntitlementUsage
from meterline.services.entitlements import EntitlementService

MINUTE_US = 60_000_000
HISTORY_WINDOWS = ("MINUTE", "HOUR", "DAY", "MONTH")


@dataclass(frozen=True, slots=True)
class Checked:
    """One feature of a check: the entitlement (None without one), the value and the verdict."""

    feature: str
    entitlement: Entitlement | None
    value: Value | None
    allowed: bool
    denial: str | None


@dataclass(frozen=True, slots=True)
class Check:
    customer: str
    allowed: bool
    features: list[Checked]


class EntitlementValueService:
    def __init__(
        self, entitlements: EntitlementService, usage: EntitlementUsage, clock: Clock, limits: QueryLimits
    ) -> None:
        self._entitlements = entitlements
        self._usage = usage
        self._clock = clock
        self._limits = limits

    def current_period(self, ent: Entitlement) -> Period | None:
        """The usage period a metered entitlement is in now (None for other types)."""
        return self._usage.period_at(ent, self._clock.now_us()) if ent.spec.type == "metered" else None

    def value(self, namespace: str, owner: str, entitlement: str, at_us: int | None = None) -> Value:
        """The value now, or of a metered entitlement as of ``at_us``."""
        ent = self._entitlements.find(namespace, owner, entitlement)
        if at_us is not None and ent.spec.type == "metered":
            past = self._usage.value_at(ent, at_us)
            if past is None:
                raise NotFound("the entitlement's meter no longer exists", code="meter_not_found")
            return past
        _, value = self._usage.value(namespace, ent.customer_key, ent.feature_key)
        assert value is not None  # the entitlement was just found
        return value

    def reset(
        self,
        namespace: str,
        owner: str,
        entitlement: str,
        effective_us: int | None,
        retain_anchor: bool,
        preserve_overage: bool | None,
    ) -> None:
        """Reset a metered entitlement's usage (``EntitlementService.reset``). The overage at
        the reset carries into the new period when ``preserve_overage`` says so (default: the
        entitlement's ``preserveOverageAtReset``, as in OpenMeter)."""
        ent = self._entitlements.find(namespace, owner, entitlement)
        keep = ent.spec.preserve_overage_at_reset if preserve_overage is None else preserve_overage
        carried = self._overage_before if keep else None
        self._entitlements.reset(namespace, owner, ent.id, effective_us, retain_anchor, carried)

    def _overage_before(self, ent: Entitlement, at_us: int) -> Decimal:
        """The overage of the usage before ``at_us`` (a whole minute): the value as of the
        minute before it."""
        value = self._usage.value_at(ent, at_us - 1)
        return Decimal(0) if value is None or value.overage is None else value.overage

    def check(self, namespace: str, customer: str | None, features: Sequence[tuple[str, Decimal]]) -> Check:
        """Would using these quantities of these features be allowed now (live counters only)?"""
        if customer is None or not features:
            raise InvalidInput("send `customer` (or `subject`) and at least one feature", code="invalid_check_request")
        key = self._usage.customer_key(namespace, customer)
        if key is None:
            raise NotFound(f"no customer {customer!r}", code="customer_not_found")
        results = []
        for feature, quantity in features:
            ent, value = self._usage.value(namespace, key, feature, project=False)
            v = verdict(ent, value, quantity)
            results.append(Checked(feature, ent, value, v.allowed, v.denial))
        return Check(key, all(r.allowed for r in results), results)

    def history(
        self,
        namespace: str,
        owner: str,
        entitlement: str,
        start_us: int | None,
        end_us: int | None,
        window_size: str,
        time_zone: str,
    ) -> tuple[list[WindowUsage], list[PeriodUsage]]:
        """Usage per window (default: from the current period's start through the current
        minute; any instants, answered exactly) and per usage period, of a metered entitlement."""
        if window_size not in HISTORY_WINDOWS:
            raise InvalidInput("windowSize must be MINUTE, HOUR, DAY or MONTH", code="invalid_window_size")
        ent = self._entitlements.find(namespace, owner, entitlement)
        now = self._clock.now_us()
        current = self._usage.period_at(ent, now)
        if current is None:
            raise InvalidInput("history exists for metered entitlements only", code="invalid_entitlement")
        end = now - now % MINUTE_US + MINUTE_US if end_us is None else end_us  # through the current minute
        start = current.start_us if start_us is None else start_us
        if end <= start:
            raise InvalidInput("`to` must be after `from`", code="invalid_range")
        # any from/to, answered exactly: whole minutes from the rollups, the partial first
        # and last minute from the ledger (domain.meters.edges), as meter queries are
        query = exact_query(start, end, window_size=WindowSize(window_size), tz=zone(time_zone), limits=self._limits)
        windows = self._usage.windows(ent, query) or []
        dated = [(s, e, usage, self._period(ent, s)) for s, e, usage in windows]
        return burndown(dated, ent.spec.issue_after_reset or Decimal(0), lambda p: self._carried(ent, p))

    def _carried(self, ent: Entitlement, period: Period) -> Decimal:
        """The overage ``period`` inherited (0 unless the entitlement preserves overage)."""
        if not (ent.spec.preserve_overage_at_reset or ent.reset_overage > 0):
            return Decimal(0)
        value = self._usage.value_at(ent, period.start_us)
        return Decimal(0) if value is None else value.carried

    def _period(self, ent: Entitlement, start_us: int) -> Period:
        period = self._usage.period_at(ent, start_us)
        if period is None:
            raise NotFound("the entitlement's meter no longer exists", code="meter_not_found")
        return period
