"""The :class:`~meterline.ports.entitlement_usage.EntitlementUsage` of the live counters: their
values now, the rollups (through ``History``) for the past."""

from __future__ import annotations

from decimal import Decimal

from meterline.domain.entitlements.credit import Segment
from meterline.domain.entitlements.model import Entitlement
from meterline.domain.entitlements.value import Value
from meterline.domain.meters.query import MeterQuery
from meterline.domain.periods import Period
from meterline.services.counters import History, LiveCounters


class CountedEntitlementUsage:
    def __init__(self, counters: LiveCounters, history: History) -> None:
        self._counters = counters
        self._history = history

    def customer_key(self, namespace: str, key_or_subject: str) -> str | None:
        return self._counters.customer_key(namespace, key_or_subject)

    def value(
        self, namespace: str, customer_key: str, feature_key: str, *, project: bool = True
    ) -> tuple[Entitlement | None, Value | None]:
        return self._counters.value(namespace, customer_key, feature_key, project=project)

    def period_at(self, ent: Entitlement, t_us: int) -> Period | None:
        live = self._history.live(ent.id)
        return None if live is None else live.period_at(t_us)

    def value_at(self, ent: Entitlement, t_us: int) -> Value | None:
        live = self._history.live(ent.id)
        return None if live is None else self._history.value_at(live, t_us)

    def state_at_reset(self, ent: Entitlement, at_us: int, preserve: bool) -> tuple[Decimal, dict[str, Decimal]]:
        live = self._history.live(ent.id)
        return (Decimal(0), {}) if live is None else self._history.state_at_reset(live, at_us, preserve)

    def segments(self, ent: Entitlement, start_us: int, end_us: int) -> list[Segment] | None:
        live = self._history.live(ent.id)
        return None if live is None else self._history.segments(live, start_us, end_us)

    def windows(self, ent: Entitlement, query: MeterQuery) -> list[tuple[int, int, Decimal]] | None:
        live = self._history.live(ent.id)
        return None if live is None else self._history.windows(live, query)
