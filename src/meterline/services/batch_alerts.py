"""Alert rules in scale mode, fed by the sink workers' applied batches (``ports.sink.BatchFollower``).

Embedded mode fires thresholds from its live counters, inside the aggregator's transaction. A
sink worker has no such transaction: it writes a batch to ClickHouse, and only then can rules
look at the usage it produced. So here:

1. after a batch is durably applied (``SinkStore.write`` returned), the worker hands its
   counted events to :meth:`BatchAlerts.follow`;
2. for every customer whose subjects appear in them, in a namespace with threshold or
   projection rules, each metered entitlement a rule covers is valued as the API values it
   (``GET .../value``: the credit engine over the catalog's grants and the usage store, which
   now holds the batch);
3. the rules decide on that value as in embedded mode (``domain.alerts.rules.fires``,
   OpenMeter's rule: the active thresholds that differ from the last of their kind fired for
   the rule, entitlement and period, read from the event log), and a projection rule whose
   projection is over ``totalAvailableGrantAmount``; ``EventLog.fire`` records each with its
   queued webhook deliveries under a unique key in PostgreSQL, so any number of workers, and
   the same range handled twice, fire it once;
4. the range's end is recorded as handled (``FollowerProgress``).

An API node that changes an entitlement's value without usage (a grant added or voided, a
reset, a new entitlement) evaluates that entitlement at once (:meth:`BatchAlerts.changed`), as
OpenMeter's balance worker recalculates on those changes.

A worker killed between 1 and 4 leaves the range unrecorded; whoever takes the stream over
hands it here again before anything else (``services.sink``), and step 3 fires what was
missed and nothing twice: the decision depends on the value and on the events fired, not on
the batch's before/after, so it cannot miss a threshold however batches of several
partitions interleave.

Spike/drop rules compare whole hours, so they are not evaluated per batch: each worker runs
:meth:`BatchAlerts.scan_anomalies` once per hour (``AnomalyScanner``, at the first poll at least
``anomaly_delay`` into the hour, so the workers have applied the hour just ended), reading every
covered entitlement's hourly usage over the baseline from the usage store, with the same rule
as embedded mode (``domain.alerts.rules.hour_anomaly``); the unique key makes every worker's
scan fire each (rule, customer, feature, spike/drop, hour) once.

The deliveries are sent by the API nodes' dispatchers (``services.dispatch``), which poll the
shared delivery store.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Sequence
from decimal import Decimal
from functools import partial

from meterline.domain.alerts.payload import alert_payload
from meterline.domain.alerts.rules import HOUR_US, PROJECTED_RULE, THRESHOLD_RULE, Rule, Threshold, fires, hour_anomaly
from meterline.domain.clock import Clock
from meterline.domain.customers.model import Customer
from meterline.domain.entitlements.model import Entitlement
from meterline.domain.entitlements.value import Value
from meterline.domain.errors import NotFound
from meterline.domain.meters.fold import LedgerEntry
from meterline.domain.meters.query import MeterQuery
from meterline.domain.meters.windows import WindowSize
from meterline.ports.customers import CustomerRepository
from meterline.ports.entitlements import EntitlementRepository
from meterline.ports.meters import UsageReader
from meterline.ports.notifications import ChannelRepository, EventLog, RuleRepository
from meterline.ports.sink import FollowerProgress
from meterline.services.counters import Live
from meterline.services.queried_usage import QueriedEntitlementUsage

log = logging.getLogger("meterline.alerts")
FOLLOWER = "alerts"
_EVALUATED = (THRESHOLD_RULE, PROJECTED_RULE)
_REMEMBERED = 100_000


class BatchAlerts:
    """A :class:`~meterline.ports.sink.BatchFollower` that fires threshold and projection rules."""

    def __init__(
        self,
        customers: CustomerRepository,
        entitlements: EntitlementRepository,
        counting: QueriedEntitlementUsage,
        usage: UsageReader,
        rules: RuleRepository,
        channels: ChannelRepository,
        events: EventLog,
        progress: FollowerProgress,
        clock: Clock,
        *,
        baseline_days: int = 7,
    ) -> None:
        self._customers = customers
        self._entitlements = entitlements
        self._counting = counting
        self._usage = usage
        self._rules = rules
        self._channels = channels
        self._events = events
        self._progress = progress
        self._clock = clock
        self._baseline_days = baseline_days
        self._fired: set[tuple[str, str, str, str, int]] = set()
        """Keys known to be recorded already (a cache: the store's unique key decides)."""

    def done(self, stream: str, applied: int) -> int:
        at = self._progress.done(FOLLOWER, stream)
        if at < applied and not self._live_rules():  # no rule can fire: nothing to hand over
            self._progress.advance(FOLLOWER, stream, applied)
            return applied
        return at

    def follow(self, stream: str, start: int, end: int, entries: Sequence[LedgerEntry]) -> None:
        rules = self._live_rules()
        subjects = sorted({(e.namespace, e.subject) for e in entries if e.namespace in rules})
        seen: set[tuple[str, str]] = set()
        for namespace, subject in subjects:
            for customer in self._attributed(namespace, subject):
                if (namespace, customer.id) not in seen:
                    seen.add((namespace, customer.id))
                    self.evaluate(customer, rules[namespace])
        self._progress.advance(FOLLOWER, stream, end)

    def _attributed(self, namespace: str, subject: str) -> list[Customer]:
        """The customers whose usage an event of ``subject`` is: the one claiming it as a
        subject key and the one keyed by it (``Customer.usage_subjects``)."""
        found = [self._customers.by_subject(namespace, subject)]
        try:
            keyed = self._customers.get(namespace, subject)
        except NotFound:
            keyed = None
        if keyed is not None and keyed.key == subject:
            found.append(keyed)
        return [c for c in found if c is not None]

    def evaluate(self, customer: Customer, rules: Sequence[Rule]) -> int:
        """Fire what ``customer``'s usage has reached now; how many alerts were new."""
        fired = 0
        channels = {c.id: c for c in self._channels.channels(customer.namespace) if not c.disabled}
        for ent in self._entitlements.list(customer.namespace, customer_id=customer.id):
            covering = [r for r in rules if r.covers(ent.feature_id, ent.feature_key)]
            if ent.spec.type != "metered" or not covering:
                continue
            live = self._counting.live(ent, customer)
            if live is not None:
                fired += self._evaluate(live, covering, channels.keys())
        return fired

    def changed(self, ent: Entitlement) -> int:
        """Evaluate one entitlement now: its value changed without usage (a grant added or
        voided, a reset, its creation), as OpenMeter's balance worker recalculates then. How
        many alerts were new. The rules decide on the value and the events fired, so an
        evaluation that fails here is made with the customer's next batch."""
        rules = self._live_rules().get(ent.namespace)
        if not rules or ent.spec.type != "metered" or ent.deleted_us is not None:
            return 0
        covering = [r for r in rules if r.covers(ent.feature_id, ent.feature_key)]
        if not covering:
            return 0
        try:
            customer = self._customers.get(ent.namespace, ent.customer_id)
        except NotFound:
            return 0
        live = self._counting.live(ent, customer)
        if live is None:
            return 0
        channels = {c.id for c in self._channels.channels(ent.namespace) if not c.disabled}
        return self._evaluate(live, covering, channels)

    def _evaluate(self, live: Live, rules: Sequence[Rule], channels: Collection[str]) -> int:
        ent, now = live.ent, self._clock.now_us()
        value = self._counting.value_of(live, now)
        assert value.period is not None
        start = value.period.start_us
        fired = 0
        for rule in rules:
            series = (ent.namespace, rule.id, ent.customer_key, ent.feature_key, start)
            for key, t in fires(rule, value, now, partial(self._events.series, *series)):
                fired += self._fire(rule, live, key, start, value, t, now, channels)
        return fired

    def scan_anomalies(self) -> int:
        """Compare the last complete hour with the baseline for every covered metered
        entitlement of every live spike/drop rule; how many alerts were new."""
        now = self._clock.now_us()
        hour_start = now - now % HOUR_US - HOUR_US
        base_start = hour_start - self._baseline_days * 24 * HOUR_US
        query = MeterQuery(base_start // 1_000_000, (hour_start + HOUR_US) // 1_000_000, WindowSize.HOUR)
        by_namespace: dict[str, list[Rule]] = {}
        for rule in self._rules.rules():
            if not rule.spec.disabled and rule.spec.type == "entitlements.usage.anomaly":
                by_namespace.setdefault(rule.namespace, []).append(rule)
        fired = 0
        for namespace, rules in by_namespace.items():
            channels = {c.id for c in self._channels.channels(namespace) if not c.disabled}
            for ent in self._entitlements.list(namespace):
                covering = [r for r in rules if r.covers(ent.feature_id, ent.feature_key)]
                if ent.spec.type != "metered" or not covering:
                    continue
                try:
                    customer = self._customers.get(namespace, ent.customer_id)
                except NotFound:
                    continue
                live = self._counting.live(ent, customer)
                if live is None:
                    continue
                windows = hourly(self._usage, live, query)
                for rule in covering:
                    verdict = hour_anomaly(rule, windows, hour_start, self._baseline_days)
                    if verdict is None:
                        continue
                    kind, last, mean = verdict
                    value = Value(True, usage=last, period=live.period_at(hour_start))
                    extra = {"hourUsage": last, "baselineHourlyMean": mean.quantize(Decimal("0.000001"))}
                    fired += self._fire(rule, live, kind, hour_start, value, None, now, channels, **extra)
        return fired

    def _fire(
        self,
        rule: Rule,
        live: Live,
        key: str,
        period_start_us: int,
        value: Value,
        threshold: Threshold | None,
        now: int,
        channels: Collection[str],
        **extra: object,
    ) -> int:
        ent = live.ent
        seen = (rule.id, ent.customer_key, ent.feature_key, key, period_start_us)
        if seen in self._fired:
            return 0
        kind = key if key in ("projected", "spike", "drop") else "threshold"
        targets = [c for c in rule.spec.channels if c in channels]

        def payload(event_id: str) -> bytes:
            return alert_payload(event_id, kind, rule, ent, live.feature, live.customer, value, threshold, now, **extra)

        event_id = self._events.fire(
            ent.namespace, rule, ent.customer_key, ent.feature_key, key, period_start_us, payload, now, targets
        )
        if len(self._fired) >= _REMEMBERED:
            self._fired.clear()
        self._fired.add(seen)
        if event_id is None:
            return 0
        log.info("alert fired", extra={"rule": rule.id, "customer": ent.customer_key, "key": key})
        return 1

    def _live_rules(self) -> dict[str, list[Rule]]:
        by_namespace: dict[str, list[Rule]] = {}
        for rule in self._rules.rules():
            if not rule.spec.disabled and rule.spec.type in _EVALUATED:
                by_namespace.setdefault(rule.namespace, []).append(rule)
        return by_namespace


def hourly(usage: UsageReader, live: Live, query: MeterQuery) -> list[tuple[int, int, Decimal]]:
    """The entitlement's usage per window of ``query`` (its subjects and the feature's group
    filters), with each window's start and end in microseconds."""
    filters = tuple((d, (v,), False) for d, v in live.filters)
    q = dataclasses.replace(query, subjects=live.subjects, group_by=(), filters=filters)
    return [(r.window_start_us, r.window_end_us, r.value) for r in usage.query(live.meter, q)]
