"""When alerts fire.

Threshold and projection rules are evaluated inside the aggregator's transaction: the live
counters' change hook names the entitlements whose usage moved (or whose definition, grants or
last reset changed), and ``prepare`` evaluates them just before COMMIT. The value is the credit
engine's (``services.entitlement_balances``), as ``GET .../value`` answers it, with the usage
read through the transaction (never through the read barriers, which wait for this very
thread). The fired alerts are returned as data (``ports.stream.Firing``) and the usage store
writes them with their queued deliveries in the transaction that commits the usage that
triggered them and the aggregator's offset (so a crash cannot lose or duplicate an alert); the
unique key (rule, customer, feature, key, period) makes each fire once, across retries and
restarts. After the commit the dispatcher is woken.

Which thresholds fire is OpenMeter's rule (``domain.alerts.rules.fires``): the active ones that
differ from the last of their kind fired for the rule, entitlement and period. Those keys are
read once from the event log and then kept here (a key fired in a transaction is added after
its COMMIT).

Spike/drop rules compare whole hours, so a scanner evaluates them once per hour from the
rollups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from decimal import Decimal
from functools import partial
from typing import Protocol
from zoneinfo import ZoneInfo

from ulid import ULID

from meterline.domain.alerts.payload import alert_payload
from meterline.domain.alerts.rules import (
    PROJECTED_RULE,
    THRESHOLD_RULE,
    Rule,
    Threshold,
    fires,
    headroom,
    hour_anomaly,
)
from meterline.domain.clock import Clock
from meterline.domain.entitlements.value import Value
from meterline.domain.meters.query import MeterQuery
from meterline.domain.meters.windows import WindowSize
from meterline.domain.notify.channels import Channel
from meterline.ports.counters import StreamHost
from meterline.ports.notifications import ChannelRepository, EventLog, RuleRepository
from meterline.ports.stream import Committed, Firing, UsageQueries
from meterline.runtime.background import Monitor, Ticker
from meterline.services.counters import History, Live, LiveCounters, State, span_usage
from meterline.services.entitlement_balances import StartCache

log = logging.getLogger("meterline.alerts")
HOUR_US = 3_600_000_000
_EVALUATED = (THRESHOLD_RULE, PROJECTED_RULE)
_REMEMBERED = 100_000
Series = tuple[str, str, str, str, int]
"""(namespace, rule, customer, feature, period start): the events one rule fires for one
entitlement in one period."""
Settled = tuple[int, object, Decimal, Decimal | None, int]
"""(period start, the counter's engine, usage, headroom, until): evaluated at that usage,
nothing changes below the headroom while the engine and its grants' activity stay."""


class AlertEvaluator:
    def __init__(
        self,
        host: StreamHost,
        counters: LiveCounters,
        rules: RuleRepository,
        channels: ChannelRepository,
        events: EventLog,
        history: History,
        clock: Clock,
        *,
        baseline_days: int,
    ) -> None:
        """Subscribes to the host's committed-usage stream (after ``counters``); call
        :meth:`reload` when notification rules or channels change."""
        self._host = host
        self._counters = counters
        self._rule_repo = rules
        self._channel_repo = channels
        self._events = events
        self._history = history
        self._clock = clock
        self._baseline_days = baseline_days
        self._rules: dict[str, list[Rule]] = {}
        self._channels: dict[str, Channel] = {}
        self._fired = False
        self._valued = False
        self._projecting: set[str] = set()
        self._pending: dict[str, tuple[Live, State, int]] = {}
        self._settled: dict[str, Settled] = {}
        self._settling: dict[str, Settled] = {}
        self._series: dict[Series, list[str]] = {}
        self._staged: dict[Series, list[str]] = {}
        self.wake: Callable[[], None] = lambda: None
        counters.on_change.append(self.on_change)
        host.subscribe(self)
        self.reload()

    def reload(self) -> None:
        rules: dict[str, list[Rule]] = {}
        for rule in self._rule_repo.rules():
            if not rule.spec.disabled:
                rules.setdefault(rule.namespace, []).append(rule)
        channels: dict[str, Channel] = {}
        for namespace in rules:
            channels |= {c.id: c for c in self._channel_repo.channels(namespace)}
        self._rules, self._channels = rules, channels
        self._projecting = {ns for ns, rs in rules.items() if any(r.spec.type == PROJECTED_RULE for r in rs)}
        self._settled = {}
        self._series = {}

    # -- in the aggregator's transaction ---------------------------------------------------

    def add_many(self, readings: Sequence[Committed]) -> None:  # readings are not needed here
        pass

    def recount(self, recomputed: Collection[tuple[int, str]]) -> None:  # the counters re-read them
        pass

    def on_change(self, changes: list[tuple[Live, Decimal, State]], now: int) -> list[Firing]:
        """Note the counters to evaluate in :meth:`prepare`. Fast path: an entitlement evaluated
        before remembers the usage up to which nothing can change (the lowest threshold not
        reached yet, while its grants stay as they were), so usage below it costs a comparison."""
        rules_of, settled, projecting = self._rules, self._settled, self._projecting
        for live, _, state in changes:
            ent = live.ent
            if ent.namespace not in rules_of:
                continue
            known = settled.get(ent.id)
            after = state[3]
            if (
                known is not None
                and known[0] == state[1]
                and known[1] is live.engine
                and now < known[4]
                and known[2] <= after
                and (known[3] is None or after < known[3])
                and ent.namespace not in projecting
            ):
                continue
            self._pending[ent.id] = (live, state, now)
        return []

    def prepare(self, usage: UsageQueries) -> list[Firing]:
        """Evaluate the noted entitlements, with their usage read through the transaction."""
        if not self._pending:
            return []
        pending, self._pending = self._pending, {}
        firings: list[Firing] = []
        for live, state, now in pending.values():
            self._evaluate(firings, live, state, usage, now)
        if firings:
            self._fired = True
        return firings

    def _evaluate(self, out: list[Firing], live: Live, state: State, usage: UsageQueries, now: int) -> None:
        ent = live.ent
        period, start = state[0], state[1]
        assert period is not None
        rules = [r for r in self._rules.get(ent.namespace, ()) if r.spec.type in _EVALUATED]
        rules = [r for r in rules if r.covers(ent.feature_id, ent.feature_key)]
        if not rules:
            self._settling[ent.id] = (start, live.engine, state[3], None, period.end_us)
            return
        self._valued = True
        burndown = live.burndown(self._counters.starts)
        value = burndown.value(now, lambda a, b: span_usage(usage, live, a, b), live_usage=state[3], period=period)
        for rule in rules:
            series = (ent.namespace, rule.id, ent.customer_key, ent.feature_key, start)
            for key, t in fires(rule, value, now, partial(self._keys, series)):
                self._staged.setdefault(series, list(self._keys(series))).append(key)
                out.append(self._firing(rule, live, key, start, value, t, now))
        thresholds = [t for r in rules for t in r.spec.thresholds]
        assert value.usage is not None and value.allowance is not None
        until = burndown.steady_until(now, period.end_us)
        if until is not None:
            hi = headroom(thresholds, value.usage, value.balance or Decimal(0), value.allowance)
            self._settling[ent.id] = (start, live.engine, state[3], hi, until)

    def _keys(self, series: Series) -> list[str]:
        """The keys fired in ``series`` (oldest first), this transaction's included."""
        staged = self._staged.get(series)
        if staged is not None:
            return staged
        known = self._series.get(series)
        if known is None:
            if len(self._series) >= _REMEMBERED:
                self._series.clear()
            known = self._series[series] = self._events.series(*series)
        return known

    def _firing(
        self,
        rule: Rule,
        live: Live,
        key: str,
        period_start_us: int,
        value: Value,
        threshold: Threshold | None,
        now: int,
        **extra: object,
    ) -> Firing:
        kind = key if key in ("projected", "spike", "drop") else "threshold"
        channels = tuple(c for c in rule.spec.channels if c in self._channels and not self._channels[c].disabled)
        ent = live.ent
        event_id = str(ULID())
        payload = alert_payload(event_id, kind, rule, ent, live.feature, live.customer, value, threshold, now, **extra)
        log.info("alert fired", extra={"rule": rule.id, "customer": ent.customer_key, "key": key})
        return Firing(
            event_id,
            ent.namespace,
            rule.id,
            ent.customer_key,
            ent.feature_key,
            key,
            period_start_us,
            payload,
            now,
            channels,
        )

    def after_commit(self) -> None:
        self._series.update(self._staged)
        if len(self._settled) >= _REMEMBERED:
            self._settled.clear()
        self._settled.update(self._settling)
        self._staged.clear()
        self._settling.clear()
        self._valued = False
        if self._fired:
            self._fired = False
            self.wake()

    def rolled_back(self) -> None:
        """Forget what this transaction evaluated: its usage, its keys and the period starts
        the engine read through it no longer exist."""
        self._fired = False
        self._pending.clear()
        self._staged.clear()
        self._settling.clear()
        if self._valued:
            self._valued = False
            self._counters.starts = StartCache()

    # -- hourly spike/drop scan -------------------------------------------------------------

    def scan_anomalies(self) -> int:
        """Compare the last complete hour with the baseline for every anomaly rule; returns
        how many alerts fired."""
        now = self._clock.now_us()
        hour_start = now - now % HOUR_US - HOUR_US
        base_start = hour_start - self._baseline_days * 24 * HOUR_US
        fired = 0
        for rules in list(self._rules.values()):
            for rule in rules:
                if rule.spec.type != "entitlements.usage.anomaly":
                    continue
                for live in list(self._counters.index.live.values()):
                    if live.ent.namespace == rule.namespace and rule.covers(live.ent.feature_id, live.ent.feature_key):
                        fired += self._scan_one(rule, live, base_start, hour_start, now)
        return fired

    def _scan_one(self, rule: Rule, live: Live, base_start: int, hour_start: int, now: int) -> int:
        query = MeterQuery(
            base_start // 1_000_000, (hour_start + HOUR_US) // 1_000_000, WindowSize.HOUR, ZoneInfo("UTC")
        )
        verdict = hour_anomaly(rule, self._history.windows(live, query), hour_start, self._baseline_days)
        if verdict is None:
            return 0
        kind, last, mean = verdict
        value = Value(True, usage=last, period=live.period_at(hour_start))
        extra = {"hourUsage": last, "baselineHourlyMean": mean.quantize(Decimal("0.000001"))}
        firing = self._firing(rule, live, kind, hour_start, value, None, now, **extra)
        fired = self._host.record([firing])
        if fired:
            self.wake()
        return int(fired)


class AnomalyScan(Protocol):
    def scan_anomalies(self) -> int: ...


class AnomalyScanner:
    """Runs ``scan_anomalies`` once per hour (checked every ``poll`` s, at the first poll at
    least ``delay`` s into the hour), on a supervised loop: a failed scan is logged, counted and
    tried again at the next poll. Embedded mode scans with its :class:`AlertEvaluator`, a sink
    worker of scale mode with its ``BatchAlerts`` (``delay``: time for the workers to apply
    the hour just ended)."""

    def __init__(
        self,
        evaluator: AnomalyScan,
        clock: Clock,
        poll: float = 30.0,
        monitor: Monitor | None = None,
        *,
        delay: float = 0.0,
    ) -> None:
        self._evaluator = evaluator
        self._clock = clock
        self._delay_us = int(delay * 1_000_000)
        self._ticker = Ticker("anomalies", self._scan, lambda: poll, monitor, error_pause=0.0)
        self._last_hour = -1

    def start(self) -> None:
        self._ticker.start()

    def close(self) -> None:
        self._ticker.close()

    def _scan(self) -> None:
        now = self._clock.now_us()
        hour = now // HOUR_US
        if hour != self._last_hour and now % HOUR_US >= self._delay_us:
            self._evaluator.scan_anomalies()
            self._last_hour = hour
