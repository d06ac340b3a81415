"""What an entitlement is worth: its value now or at a past time, the check of quantities a
caller is about to use, and its usage history with the burndown per period."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from meterline.domain.clock import Clock, rfc3339
from meterline.domain.entitlements.credit import Segment
from meterline.domain.entitlements.history import WindowUsage
from meterline.domain.entitlements.model import Entitlement
from meterline.domain.entitlements.rules import reset_at
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
        """Reset a metered entitlement's usage (``EntitlementService.reset``): not before the
        current usage period (OpenMeter refuses that too). Each grant rolls over and the
        overage carries into the new period when ``preserve_overage`` says so (default: the
        entitlement's ``preserveOverageAtReset``, as in OpenMeter); the credit engine's state
        then is kept on the entitlement, where later runs resume."""
        ent = self._entitlements.find(namespace, owner, entitlement)
        keep = ent.spec.preserve_overage_at_reset if preserve_overage is None else preserve_overage
        now = self._clock.now_us()
        at = reset_at(ent, effective_us, now)
        current = self._usage.period_at(ent, now)
        if current is not None and at < current.start_us:
            raise InvalidInput(
                f"a reset cannot be before the current usage period's start {rfc3339(current.start_us)}",
                code="invalid_reset",
            )
        overage, balances = self._usage.state_at_reset(ent, at, keep)
        self._entitlements.reset(namespace, owner, ent.id, effective_us, retain_anchor, (overage, balances))

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
    ) -> tuple[list[WindowUsage], list[Segment]]:
        """Usage per window (default: from the current period's start through the current
        minute; any instants, answered exactly) and the credit engine's burndown segments (OpenMeter's
        ``burndownHistory``) of a metered entitlement."""
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
        segments = self._usage.segments(ent, start, end) or []
        return self._window_balances(ent, windows, segments), segments

    def _window_balances(
        self, ent: Entitlement, windows: list[tuple[int, int, Decimal]], segments: list[Segment]
    ) -> list[WindowUsage]:
        """Each window with the balance at its start: its segment's balance, less what the
        segment's usage before the window (and the overage it started with) burnt."""
        out, current, used = [], None, Decimal(0)
        for start, end, usage in windows:
            seg = _segment_at(segments, start)
            if seg is None:
                out.append(WindowUsage(start, end, usage, Decimal(0)))
                continue
            if seg is not current:
                current, used = seg, self._usage_between(ent, seg.start_us, start)
            left = seg.balance_at_start - seg.overage_at_start - used
            out.append(WindowUsage(start, end, usage, max(left, Decimal(0))))
            used += usage
        return out

    def _usage_between(self, ent: Entitlement, start_us: int, end_us: int) -> Decimal:
        if end_us <= start_us:
            return Decimal(0)
        rows = self._usage.windows(ent, exact_query(start_us, end_us, limits=self._limits)) or []
        return sum((u for _, _, u in rows), Decimal(0))


def _segment_at(segments: list[Segment], t_us: int) -> Segment | None:
    """The segment in force at ``t_us`` (the last one starting at or before it)."""
    found = None
    for seg in segments:
        if seg.start_us > t_us:
            break
        if seg.end_us > t_us or seg.start_us == seg.end_us:
            found = seg
    return found
