"""Billing's reads from outside its stores, in memory: period usage computed straight from the
events it was given (each meter reads them as the aggregator would), and a directory over the
memory customers and the meters it was given."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

from meterline.adapters.memory.customers import MemoryCustomers
from meterline.domain.billing import UsageKey
from meterline.domain.billing.records import UsageAsk
from meterline.domain.customers.model import Customer
from meterline.domain.decimals import add, average
from meterline.domain.events.model import Event
from meterline.domain.meters.evaluate import CompiledMeter, Reading
from meterline.domain.meters.model import Aggregation, Meter

Folded = tuple[int, int, Reading]  # (time, arrival, reading)


class MemoryPeriodUsage:
    """``PeriodUsage`` over events kept in arrival order (events a meter cannot read are skipped,
    as ingest would have rejected them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def add(self, events: Iterable[Event]) -> None:
        with self._lock:
            self._events += events

    def usage(self, meters: Mapping[str, Meter], asks: Sequence[UsageAsk]) -> list[dict[UsageKey, Decimal]]:
        with self._lock:
            events = list(self._events)
        compiled = {slug: CompiledMeter(m) for slug, m in meters.items()}
        return [_answer(compiled, events, ask) for ask in asks]


def _answer(meters: Mapping[str, CompiledMeter], events: list[Event], ask: UsageAsk) -> dict[UsageKey, Decimal]:
    out: dict[UsageKey, Decimal] = {}
    subjects = set(ask.subjects)
    for slug, dim in ask.queries:
        meter = meters[slug]
        groups: dict[str | None, list[Folded]] = {}
        if dim is None:
            groups[None] = []
        for n, e in enumerate(events):
            if e.subject not in subjects or not ask.start_us <= e.time_us < ask.end_us or not meter.applies(e):
                continue
            reading = meter.read(e)
            if isinstance(reading, Reading):
                group = None if dim is None else reading.groups[meter.dimensions.index(dim)] or ""
                groups.setdefault(group, []).append((e.time_us, n, reading))
        for group, folded in groups.items():
            key: UsageKey = (slug, None) if group is None else (slug, ((str(dim), group),))
            out[key] = _fold(meter.aggregation, folded)
    return out


def _fold(aggregation: Aggregation, folded: list[Folded]) -> Decimal:
    if aggregation is Aggregation.COUNT:
        return Decimal(len(folded))
    if aggregation is Aggregation.UNIQUE_COUNT:
        return Decimal(len({r.value for _, _, r in folded}))
    values = [r.value for _, _, r in folded if isinstance(r.value, Decimal)]
    if not values:
        return Decimal(0)
    if aggregation is Aggregation.MIN:
        return min(values)
    if aggregation is Aggregation.MAX:
        return max(values)
    if aggregation is Aggregation.LATEST:
        value = max(folded, key=lambda f: (f[0], f[1]))[2].value
        assert isinstance(value, Decimal)
        return value
    total = Decimal(0)
    for v in values:
        total = add(total, v)
    return average(total, len(values)) if aggregation is Aggregation.AVG else total


class MemoryBillingDirectory:
    """``BillingDirectory`` over memory customers and the meters given to :meth:`add_meter`."""

    def __init__(self, customers: MemoryCustomers) -> None:
        self._customers = customers
        self._meters: dict[tuple[str, str], Meter] = {}

    def add_meter(self, meter: Meter) -> None:
        self._meters[(meter.namespace, meter.slug)] = meter

    def customer(self, namespace: str, key: str) -> Customer:
        return self._customers.get(namespace, key)

    def customers(self, namespace: str) -> dict[str, Customer]:
        return {c.id: c for c in self._customers.list(namespace)}

    def meters(self, namespace: str) -> list[Meter]:
        return [m for (ns, _), m in sorted(self._meters.items()) if ns == namespace]
