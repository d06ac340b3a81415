"""When alerts fire.

Threshold and projection rules are evaluated inside the aggregator's transaction, from the
live counters' change hook: they return the fired alerts as data (``ports.stream.Firing``),
and the usage store writes them with their queued deliveries in the transaction that commits
the usage that crossed the threshold and the aggregator's offset (so a crash cannot lose or
duplicate an alert); the unique key (rule, customer, feature, threshold, period) makes it fire
once per period, across retries and restarts. After the commit the dispatcher is woken.

Spike/drop rules compare whole hours, so a scanner evaluates them once per hour from the
rollups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from decimal import Decimal
from typing import Protocol
from zoneinfo import ZoneInfo

from ulid import ULID

from meterline.domain.alerts.payload import alert_payload
from meterline.domain.alerts.rules import PROJECTED_RULE, Rule, Threshold, fires, hour_anomaly, level
from meterline.domain.clock import Clock
from meterline.domain.decimals import EXACT
from meterline.domain.entitlements.value import Value, grant_total, metered_value
from meterline.domain.meters.query import MeterQuery
from meterline.domain.meters.windows import WindowSize
from meterline.domain.notify.channels import Channel
from meterline.ports.counters import StreamHost
from meterline.ports.notifications import ChannelRepository, RuleRepository
from meterline.ports.stream import Committed, Firing, UsageQueries
from meterline.runtime.background import Monitor, Ticker
from meterline.services.counters import History, Live, LiveCounters, State

log = logging.getLogger("meterline.alerts")
HOUR_US = 3_600_000_000
_ZERO = Decimal(0)


class AlertEvaluator:
    def __init__(
        self,
        host: StreamHost,
        counters: LiveCounters,
        rules: RuleRepository,
        channels: ChannelRepository,
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
        self._history = history
        self._clock = clock
        self._baseline_days = baseline_days
        self._rules: dict[str, list[Rule]] = {}
        self._channels: dict[str, Channel] = {}
        self._fired = False
        self._projecting: set[str] = set()
        self._next: dict[str, tuple[int, Decimal, Decimal | None]] = {}
        self._level_cache: dict[tuple[str, Decimal], dict[str, Decimal]] = {}
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
        self._next = {}
        self._level_cache = {}

    # -- in the aggregator's transaction ---------------------------------------------------

    def add_many(self, readings: Sequence[Committed]) -> None:  # readings are not needed here
        pass

    def recount(self, recomputed: Collection[tuple[int, str]]) -> None:  # the counters re-read them
        pass

    def prepare(self, usage: UsageQueries) -> list[Firing]:  # fires from the counters' hook
        return []

    def on_change(self, changes: list[tuple[Live, Decimal, State]], now: int) -> list[Firing]:
        """Fire what each counter's move crossed. Fast path: each entitlement remembers the
        lowest threshold level above its usage (for its period and allowance), so usage that
        stays below it costs one comparison, however many rules there are."""
        rules_of, cache, projecting = self._rules, self._next, self._projecting
        firings: list[Firing] = []
        for live, before, state in changes:
            ent = live.ent
            rules = rules_of.get(ent.namespace)
            if not rules:
                continue
            start, after = state[1], state[3]
            allowance = ent.spec.issue_after_reset or _ZERO
            if live.grants:
                assert state[0] is not None
                allowance = EXACT.add(allowance, grant_total(live.grants, state[0], now))
            cached = cache.get(ent.id)
            if (
                cached is not None
                and cached[0] == start
                and cached[1] == allowance
                and (cached[2] is None or after < cached[2])
                and ent.namespace not in projecting
            ):
                continue
            self._evaluate(firings, rules, live, before, state, allowance, now)
        if firings:
            self._fired = True
        return firings

    def _evaluate(
        self,
        out: list[Firing],
        rules: list[Rule],
        live: Live,
        before: Decimal,
        state: State,
        allowance: Decimal,
        now: int,
    ) -> None:
        ent = live.ent
        period, start, end, after = state
        assert period is not None
        value = metered_value(ent, after, EXACT.subtract(allowance, ent.spec.issue_after_reset or _ZERO), period, now)
        levels = self._levels(ent.namespace, allowance)
        hit = {key for key, at in levels.items() if before < at <= after}
        for rule in rules:
            if rule.covers(ent.feature_id, ent.feature_key):
                due = fires(rule, lambda t: t.key in hit, value.projected_usage, allowance, (start, end), now)
                out.extend(self._firing(rule, live, key, start, value, t, now) for key, t in due)
        upcoming = [at for at in levels.values() if at > after]
        self._next[ent.id] = (start, allowance, min(upcoming) if upcoming else None)

    def _levels(self, namespace: str, allowance: Decimal) -> dict[str, Decimal]:
        """The usage level of every distinct threshold of the namespace's rules at ``allowance``
        (cached: entitlements of one plan share their allowance, rules often share thresholds)."""
        cached = self._level_cache.get((namespace, allowance))
        if cached is None:
            thresholds = {t.key: t for r in self._rules.get(namespace, ()) for t in r.spec.thresholds}
            cached = {k: at for k, t in thresholds.items() if (at := level(t, allowance)) is not None}
            if len(self._level_cache) > 10_000:
                self._level_cache.clear()
            self._level_cache[(namespace, allowance)] = cached
        return cached

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
        if self._fired:
            self._fired = False
            self.wake()

    def rolled_back(self) -> None:
        self._fired = False
        self._next.clear()  # levels remembered from usage that no longer exists

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
