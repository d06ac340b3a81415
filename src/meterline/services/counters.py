"""Live entitlement counters, a listener of the committed-usage stream (``ports.stream``).

Each metered entitlement has a counter: its usage in the current period. Guarantees:

1. A counter moves only with committed usage. The readings of an aggregated batch are folded
   into per-entitlement deltas inside the batch's transaction and published in
   ``after_commit`` (before the aggregator announces the batch's position, so a caller that
   waits for the position of its ingest reads its own writes); a rolled back transaction's
   deltas are dropped.
2. A counter starts from the rollups. When a counter has no period yet, or its period ended,
   it is *rolled*: in ``prepare`` (just before COMMIT, after the batch's rollup deltas were
   written) its usage for the current period is read from the rollups as of the transaction,
   which then hold every earlier aggregated event, including late ones and ones time-stamped
   ahead into the new period. The transaction's deltas for it are dropped (the read includes
   them).
3. Readings count only if their event time lies in the counter's current period: late events
   inside it move it; events for a closed period never reopen it.

Reads (``value``/``check``) are lock-free dictionary lookups; a stale counter is rolled by a
writer task first.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import cast

from meterline.domain.clock import Clock, from_us
from meterline.domain.customers.model import Customer
from meterline.domain.decimals import EXACT
from meterline.domain.entitlements.credit import Segment
from meterline.domain.entitlements.model import Entitlement, Feature, Grant
from meterline.domain.entitlements.value import ZERO, Value, Verdict, verdict
from meterline.domain.errors import InvalidInput, StorageUnavailable
from meterline.domain.meters.edges import exact_query
from meterline.domain.meters.model import Aggregation, Meter
from meterline.domain.meters.query import MeterQuery
from meterline.domain.periods import Period, Recurrence, recurrence
from meterline.ports.counters import CounterSource, StreamHost
from meterline.ports.stream import Committed, Firing, UsageQueries
from meterline.services.entitlement_balances import Burndown, StartCache

ONE = Decimal(1)
_ACCESS = Value(True)
_NO_ACCESS = Value(False)
log = logging.getLogger("meterline.counters")
State = tuple[Period | None, int, int, Decimal]


def _state(period: Period, usage: Decimal) -> State:
    return (period, period.start_us, period.end_us, usage)


@dataclass(slots=True)
class Live:
    """One metered entitlement's counter and what it needs to count."""

    ent: Entitlement
    customer: Customer
    feature: Feature
    meter: Meter
    subjects: tuple[str, ...]
    filters: tuple[tuple[str, str], ...]
    """The feature's group filters as (groupBy key, value): by name, so a ``groupBy`` change
    that keeps them (the meter service refuses one that does not) keeps the counter."""
    recurrence: Recurrence
    grants: list[Grant]
    state: State = (None, 0, 0, ZERO)
    """(period, start_us, end_us, usage), replaced as a whole so readers see one snapshot."""
    engine: tuple[StartCache, Burndown] | None = None

    def signature(self) -> tuple[object, ...]:
        return (self.meter.key, self.subjects, self.filters, self.ent.anchor_us, self.ent.last_reset_us)

    def period_at(self, t_us: int) -> Period:
        p = self.recurrence.period_at_us(t_us)
        if p.start_us < self.ent.last_reset_us < p.end_us:
            return Period(from_us(self.ent.last_reset_us).astimezone(p.start.tzinfo), p.end)
        return p

    def burndown(self, starts: StartCache) -> Burndown:
        """The credit engine over this entitlement's grants and periods (made once per index)."""
        made = self.engine
        if made is None or made[0] is not starts:
            made = self.engine = (starts, Burndown(self.ent, self.grants, self.recurrence, starts))
        return made[1]

    def current(self, now_us: int) -> bool:
        period, start, end, _ = self.state
        return period is not None and start <= now_us < end


@dataclass(slots=True)
class Index:
    by_key: dict[tuple[str, str, str], tuple[Entitlement, Live | None]] = field(default_factory=dict)
    by_reading: dict[tuple[int, str], list[Live]] = field(default_factory=dict)
    live: dict[str, Live] = field(default_factory=dict)
    customers: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, subject or key) -> key


Change = Callable[[list[tuple["Live", Decimal, State]], int], list[Firing]]
"""Called once per transaction in ``prepare`` with every counter that moved: (entitlement,
usage before, new state incl. usage after), and the clock's now; returns the alerts fired."""


class LiveCounters:
    def __init__(
        self,
        host: StreamHost,
        source: CounterSource,
        clock: Clock,
        *,
        fresh: Callable[[], None] = lambda: None,
        fresh_check: Callable[[], None] = lambda: None,
    ) -> None:
        """``fresh`` / ``fresh_check``: the barriers a value / a check waits at before it reads
        (the aggregator's read-your-writes; see ``services.aggregation``)."""
        self._host = host
        self._source = source
        self._clock = clock
        self._fresh = fresh
        self._fresh_check = fresh_check
        self.index = Index()
        self.on_change: list[Change] = []
        self._deltas: dict[str, Decimal] = {}
        self._rolls: dict[str, State] = {}
        self._next: dict[str, State] = {}
        self._touched: set[str] = set()
        self._recount: set[str] = set()
        self._redefined: set[str] = set()
        """Counters whose entitlement, grants or last reset changed: reported to the change
        hooks even when their usage did not move (a grant changes the balance)."""
        self.stale: Callable[[], bool] = lambda: False
        """Whether the index missed a committed change (set by the backend's follow-ups)."""
        self.heal: Callable[[], bool] = lambda: True
        """Rebuild a stale index from the store; True when it is current again."""
        self.rollups: Callable[[Live, int, int], Decimal] = lambda live, start, end: ZERO
        """An entitlement's usage in a span, from the rollups (:meth:`History.usage`, set by
        bootstrap): the credit engine reads the spans the live counter does not cover."""
        self.starts = StartCache()

    # -- writer side ------------------------------------------------------------------------

    def add_many(self, readings: Sequence[Committed]) -> None:
        by_reading, rolls, touched, deltas = self.index.by_reading, self._rolls, self._touched, self._deltas
        if not by_reading:
            return
        add = EXACT.add
        for meter, reading, subject, time_us, _ in readings:
            lives = by_reading.get((reading.meter_id, subject))
            if lives is None:
                continue
            value = ONE if meter.aggregation is Aggregation.COUNT else cast(Decimal, reading.value)
            for live in lives:
                if live.filters and not _matches(meter.dimensions, reading.groups, live.filters):
                    continue
                eid = live.ent.id
                touched.add(eid)
                period, start, end, _ = (rolls.get(eid) if rolls else None) or live.state
                if period is not None and start <= time_us < end:  # else: counted by the roll, or not this period
                    deltas[eid] = add(deltas[eid], value) if eid in deltas else value

    def recount(self, recomputed: Collection[tuple[int, str]]) -> None:
        """Corrected usage: these counters are rolled again from the rollups in ``prepare``
        (which then hold the recomputed buckets), their deltas of this transaction dropped."""
        for pair in recomputed:
            for live in self.index.by_reading.get(pair, ()):
                self._touched.add(live.ent.id)
                self._recount.add(live.ent.id)

    def prepare(self, usage: UsageQueries) -> list[Firing]:
        now = self._clock.now_us()
        changes: list[tuple[Live, Decimal, State]] = []
        index_live, rolls, deltas, nxt = self.index.live, self._rolls, self._deltas, self._next
        for eid in self._touched:
            live = index_live.get(eid)
            if live is None:
                continue
            old = live.state
            if eid not in rolls and (eid in self._recount or not (old[0] is not None and old[1] <= now < old[2])):
                fresh = live.period_at(now)
                rolls[eid] = _state(fresh, self._read(usage, live, fresh))
                deltas.pop(eid, None)
            period, start, end, base = rolls.get(eid) or old
            if period is None:
                continue
            delta = deltas.get(eid)
            new = base if delta is None else EXACT.add(base, delta)
            state = (period, start, end, new)
            nxt[eid] = state
            before = old[3] if old[0] is not None and old[1] == start and old[2] == end else ZERO
            if new != before or eid in self._redefined:
                changes.append((live, before, state))
        firings: list[Firing] = []
        if changes:
            for hook in self.on_change:
                firings.extend(hook(changes, now))
        return firings

    def after_commit(self) -> None:
        live = self.index.live
        for eid, state in self._next.items():
            entry = live.get(eid)
            if entry is not None:
                entry.state = state
        self.rolled_back()

    def rolled_back(self) -> None:
        self._next.clear()
        self._deltas.clear()
        self._rolls.clear()
        self._touched.clear()
        self._recount.clear()
        self._redefined.clear()

    def _read(self, usage: UsageQueries, live: Live, period: Period) -> Decimal:
        return read_usage(usage, live, period)

    def reload(self) -> None:
        """Rebuild the index from the committed catalog (on the stream's thread; waits for
        it). The server's own follow-up work: never refused by the write queue's bound."""
        self._host.serially(self._reload, bounded=False)

    def touch(self, entitlement_id: str) -> None:
        """Roll a stale counter now (on the stream's thread; waits for it)."""
        self._host.serially(lambda: self._touched.add(entitlement_id))

    def _reload(self) -> None:
        old, now = self.index.live, self._clock.now_us()
        found = self._source.catalog()
        meters = {(m.namespace, m.spec.slug): m for m in found.meters}
        customers = {c.id: c for c in found.customers}
        ents, grants, features = found.entitlements, found.grants, found.features
        index = Index()
        for c in customers.values():
            index.customers[(c.namespace, c.key)] = c.key
            for s in c.subjects:
                index.customers.setdefault((c.namespace, s), c.key)
        for ent in ents:
            customer = customers.get(ent.customer_id)
            if customer is None:
                continue
            live = live_counter(ent, customer, features.get(ent.feature_id), meters, grants.get(ent.id, []), now)
            index.by_key[(ent.namespace, customer.key, ent.feature_key)] = (ent, live)
            if live is None:
                continue
            previous = old.get(ent.id)
            if previous is not None and previous.signature() == live.signature():
                live.state = previous.state
            else:
                self._touched.add(ent.id)
            if old and (previous is None or previous.ent != live.ent or previous.grants != live.grants):
                self._touched.add(ent.id)
                self._redefined.add(ent.id)
            index.live[ent.id] = live
            for s in live.subjects:
                index.by_reading.setdefault((live.meter.key, s), []).append(live)
        self.index = index

    def added(self, ent: Entitlement) -> None:
        """Index one new entitlement without rebuilding the rest (on the stream's thread; waits)."""
        self._host.serially(lambda: self._add(ent), bounded=False)

    def _add(self, ent: Entitlement) -> None:
        found = self._source.for_entitlement(ent)
        customer = next((c for c in found.customers if c.id == ent.customer_id), None)
        if customer is None:
            return
        meters = {(m.namespace, m.spec.slug): m for m in found.meters}
        live = live_counter(ent, customer, found.features.get(ent.feature_id), meters, [], self._clock.now_us())
        index = self.index
        index.by_key[(ent.namespace, customer.key, ent.feature_key)] = (ent, live)
        if live is not None:
            index.live[ent.id] = live
            for s in live.subjects:
                index.by_reading.setdefault((live.meter.key, s), []).append(live)
            self._touched.add(ent.id)
            self._redefined.add(ent.id)

    def customer_added(self, namespace: str, key: str, subjects: tuple[str, ...]) -> None:
        """A new customer (no entitlements yet): only the key/subject lookup changes."""
        customers = self.index.customers
        customers[(namespace, key)] = key
        for s in subjects:
            customers.setdefault((namespace, s), key)

    # -- read side --------------------------------------------------------------------------

    def customer_key(self, namespace: str, key_or_subject: str) -> str | None:
        return self.index.customers.get((namespace, key_or_subject))

    def value(
        self, namespace: str, customer_key: str, feature_key: str, *, project: bool = True
    ) -> tuple[Entitlement | None, Value | None]:
        """The entitlement's value now. A value (``project``) waits for the aggregator as every
        usage read does; a check (``project=False``) may answer from counters that are at most
        ``aggregation.check_staleness`` behind (``Database.fresh_check``)."""
        (self._fresh if project else self._fresh_check)()
        if self.stale() and not self.heal():
            raise StorageUnavailable(
                "The live counters lag behind the store and cannot be rebuilt from it now; retry shortly"
            )
        entry = self.index.by_key.get((namespace, customer_key, feature_key))
        if entry is None:
            return None, None
        ent, live = entry
        if live is None:  # boolean, static, or metered on a meter that no longer exists
            if ent.spec.type == "static":
                return ent, Value(True, config=ent.spec.config)
            return ent, _ACCESS if ent.spec.type == "boolean" else _NO_ACCESS
        now = self._clock.now_us()
        period, start, end, usage = live.state
        if period is None or not start <= now < end:
            self.touch(ent.id)
            period, _, _, usage = live.state
            assert period is not None
        burndown = live.burndown(self.starts)
        value = burndown.value(
            now, lambda a, b: self.rollups(live, a, b), live_usage=usage, project=project, period=period
        )
        return ent, value

    def check(self, namespace: str, customer_key: str, feature_key: str, quantity: Decimal) -> Verdict:
        ent, value = self.value(namespace, customer_key, feature_key, project=False)
        return verdict(ent, value, quantity)


def live_counter(
    ent: Entitlement,
    customer: Customer,
    feature: Feature | None,
    meters: dict[tuple[str, str], Meter],
    grants: list[Grant],
    now_us: int,
) -> Live | None:
    if ent.spec.type != "metered" or feature is None or feature.spec.meter_slug is None:
        return None
    meter = meters.get((ent.namespace, feature.spec.meter_slug))
    if meter is None or ent.spec.usage_period is None:
        return None
    dims = tuple(sorted(meter.spec.group_by))
    wanted = sorted((feature.spec.meter_group_by_filters or {}).items())
    filters = tuple((d, v) for d, v in wanted if d in dims)
    try:
        rec = recurrence(ent.spec.usage_period.interval, from_us(ent.anchor_us), customer.timezone)
        for t_us in (ent.anchor_us, now_us):
            rec.period_at_us(t_us)
    except (InvalidInput, OverflowError, ValueError):
        # Fail closed, alone: a stored entitlement whose periods fall outside the date range
        # (written before anchors were bounded) answers "no access"; it never stops start-up
        # or the writes of everyone else.
        log.error("entitlement periods out of range; it has no counter", extra={"entitlement": ent.id})
        return None
    return Live(ent, customer, feature, meter, customer.usage_subjects, filters, rec, grants)


def _matches(dims: tuple[str, ...], groups: tuple[str | None, ...], filters: tuple[tuple[str, str], ...]) -> bool:
    """Whether a reading (its group values in ``dims`` order) passes every filter."""
    for name, value in filters:
        if name not in dims or groups[dims.index(name)] != value:
            return False
    return True


def read_usage(usage: UsageQueries, live: Live, period: Period) -> Decimal:
    """The entitlement's usage within ``period`` as the usage store answers it (its subjects
    and the feature's group filters)."""
    filters = tuple((d, (v,), False) for d, v in live.filters)
    start, end = period.start_us // 1_000_000, period.end_us // 1_000_000
    query = MeterQuery(start, end, subjects=live.subjects, filters=filters)
    return sum((row.value for row in usage.query(live.meter, query)), ZERO)


def span_usage(usage: UsageQueries, live: Live, start_us: int, end_us: int) -> Decimal:
    """The entitlement's usage in ``[start_us, end_us)``, any instants (``domain.meters.edges``)."""
    filters = tuple((d, (v,), False) for d, v in live.filters)
    query = exact_query(start_us, end_us, subjects=live.subjects, filters=filters)
    return sum((row.value for row in usage.query(live.meter, query)), ZERO)


class History:
    """Usage of a metered entitlement at past times, read from the rollups (not the counters)."""

    def __init__(
        self, counters: LiveCounters, usage: UsageQueries, clock: Clock, fresh: Callable[[], None] = lambda: None
    ) -> None:
        self._counters = counters
        self._usage = usage
        self._clock = clock
        self._fresh = fresh

    def live(self, entitlement_id: str) -> Live | None:
        return self._counters.index.live.get(entitlement_id)

    def value_at(self, live: Live, t_us: int) -> Value:
        """The value as of ``t_us``: the credit engine over the rollups' usage through the
        minute holding ``t_us``."""
        return live.burndown(self._counters.starts).value(t_us, lambda a, b: self.usage(live, a, b))

    def state_at_reset(self, live: Live, at_us: int, preserve: bool) -> tuple[Decimal, dict[str, Decimal]]:
        """The overage and grant balances a reset at ``at_us`` leaves (the credit engine)."""
        burndown = live.burndown(self._counters.starts)
        return burndown.state_at_reset(at_us, lambda a, b: self.usage(live, a, b), preserve)

    def segments(self, live: Live, start_us: int, end_us: int) -> list[Segment]:
        """The credit engine's burndown segments from ``start_us`` to ``end_us``."""
        return live.burndown(self._counters.starts).timeline(start_us, end_us, lambda a, b: self.usage(live, a, b))

    def usage(self, live: Live, start_us: int, end_us: int) -> Decimal:
        """Usage in ``[start_us, end_us)``, exactly (partial minutes from the ledger)."""
        if end_us <= start_us:
            return ZERO
        self._fresh()
        return span_usage(self._usage, live, start_us, end_us)

    def windows(self, live: Live, query: MeterQuery) -> list[tuple[int, int, Decimal]]:
        """Usage per window of ``query`` (its subjects and filters are the entitlement's), with
        each window's exact start and end in microseconds."""
        filters = tuple((d, (v,), False) for d, v in live.filters)
        q = dataclasses.replace(query, subjects=live.subjects, group_by=(), filters=filters)
        self._fresh()
        rows = self._usage.query(live.meter, q)
        return [(r.window_start_us, r.window_end_us, r.value) for r in rows]
