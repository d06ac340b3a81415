"""The credit engine (``domain.entitlements.credit``) run for one metered entitlement.

Shared by the embedded live counters and by the nodes that query the usage store (scale mode):
both hand in the usage of any span (``rollups``), and the current period's usage when they
count it live.

Where a run starts: the state kept by the last reset (each grant's balance and the overage
left then), or, for a time before the last reset, the start of measurement with every grant
at its amount. The state at the start of a usage period is kept in a ``StartCache`` (per
entitlement definition, grants and period), so a value of the current period runs the engine
over that period only; with no grant event inside it that is one segment and one burn, and
its usage is the live counter's.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

import msgspec

from meterline.domain.clock import from_us
from meterline.domain.decimals import EXACT
from meterline.domain.entitlements.credit import ZERO, Credit, Segment, Snapshot, balance_at, run
from meterline.domain.entitlements.model import Entitlement, Grant
from meterline.domain.entitlements.rules import default_grant
from meterline.domain.entitlements.value import Value, projection
from meterline.domain.errors import InvalidInput
from meterline.domain.periods import Period, Recurrence, recurrence

MINUTE_US = 60_000_000
Rollups = Callable[[int, int], Decimal]
"""The entitlement's usage in ``[from_us, to_us)`` as the usage store answers it."""


@dataclass(frozen=True, slots=True)
class PeriodStart:
    snapshot: Snapshot
    """Each grant's balance and the overage as the period's first segment starts."""
    burnt: Decimal
    """Preserved overage the rolled-over grants covered at the reset that opened the period."""
    carried: Decimal
    """Overage preserved into the period by that reset (before the grants covered it)."""


class StartCache:
    """Period-start states, keyed by everything they depend on: a change to the entitlement,
    a grant, a void or a reset makes a new key. A closed period is not reopened by late usage
    (as the live counters treat it)."""

    LIMIT = 50_000

    def __init__(self) -> None:
        self._found: dict[tuple[object, ...], PeriodStart] = {}

    def get(self, key: tuple[object, ...], compute: Callable[[], PeriodStart]) -> PeriodStart:
        found = self._found.get(key)
        if found is None:
            if len(self._found) >= self.LIMIT:
                self._found.clear()
            found = self._found[key] = compute()
        return found


def credits_of(ent: Entitlement, grants: Sequence[Grant]) -> list[Credit]:
    """The entitlement's grants as credits, ``issueAfterReset`` among them: as OpenMeter, a
    grant effective from the start of measurement, without expiry, whose balance after every
    reset is its amount (min = max rollover), burnt at ``issueAfterResetPriority``."""
    out = [_credit(g) for g in grants]
    issued = default_grant(ent)
    if issued is not None:  # effective at the start of measurement exactly, not cut to its minute
        out.append(dataclasses.replace(_credit(issued), effective_us=issued.effective_us))
    return out


def _credit(g: Grant) -> Credit:
    s = g.spec
    rec: Recurrence | None = None
    if s.recurrence is not None:
        anchor = s.recurrence.anchor or s.effective_at
        rec = recurrence(s.recurrence.interval, anchor, "UTC")
    return Credit(
        g.id,
        s.amount,
        s.priority,
        g.effective_us - g.effective_us % MINUTE_US,
        g.expires_us,
        g.created_us,
        g.voided_us,
        s.max_rollover_amount,
        s.min_rollover_amount,
        rec,
    )


class Burndown:
    """The engine over one metered entitlement's periods (``rec``: its usage periods)."""

    def __init__(self, ent: Entitlement, grants: Sequence[Grant], rec: Recurrence, cache: StartCache) -> None:
        self.ent = ent
        self.grants = grants
        self.credits = credits_of(ent, grants)
        self._rec = rec
        self._cache = cache
        self.measured_us = ent.last_reset_us if ent.measured_from_us is None else ent.measured_from_us
        self._spans = self._spans_of(ent, rec)
        grants_key = tuple((g.id, g.voided_us) for g in grants)
        self._key = (msgspec.json.encode(ent), grants_key)
        """What a period-start state depends on: the entitlement as stored (its definition,
        anchor, last reset and the state kept then) and each grant with its void."""
        self._events = sorted(
            {
                t - t % MINUTE_US
                for c in self.credits
                for t in (c.effective_us, c.expires_us, c.voided_us)
                if t is not None
            }
        )
        self._recurring = any(c.recurrence is not None for c in self.credits)
        self._memo: tuple[int, PeriodStart] | None = None
        """The last period start asked for (a check asks for the current one every time)."""

    # -- periods ----------------------------------------------------------------------------

    def _spans_of(self, ent: Entitlement, rec: Recurrence) -> list[tuple[int, int, Recurrence]]:
        """The spans before the last reset, each with the anchor's periods (without a kept
        history: one span from the start of measurement, with the current anchor)."""
        last = ent.last_reset_us
        kept = ent.earlier_resets
        if not kept:
            return [(min(self.measured_us, last), last, rec)]
        starts = [min(kept[0][0], self.measured_us), *(s for s, _ in kept[1:])]
        ends = [*starts[1:], last]
        recs = [recurrence(rec.interval, from_us(a), rec.zone) for _, a in kept]
        return list(zip(starts, ends, recs, strict=True))

    def period_at(self, t_us: int) -> Period:
        """The usage period holding ``t_us``: cut at every reset, by the anchor in force then
        (``Entitlement.earlier_resets``), the first one starting at the start of measurement."""
        last = self.ent.last_reset_us
        if t_us >= last:
            p = self._rec.period_at_us(t_us)
            start, end = max(p.start_us, last), p.end_us
        else:
            span_start, span_end, rec = self._span(t_us)
            p = rec.period_at_us(t_us)
            start, end = max(p.start_us, span_start), min(p.end_us, span_end)
        if (start, end) == (p.start_us, p.end_us):
            return p
        zone = p.start.tzinfo
        return Period(from_us(start).astimezone(zone), from_us(end).astimezone(zone))

    def _span(self, t_us: int) -> tuple[int, int, Recurrence]:
        """The span between two resets holding ``t_us`` (before the last reset; the first one
        from any earlier time): its start, its end and its periods."""
        spans = self._spans
        i = max(bisect_right(spans, t_us, key=lambda s: s[0]) - 1, 0)
        return spans[i]

    def resets(self, start_us: int, until_us: int) -> list[int]:
        """The usage-period boundaries in ``(start_us, until_us]``."""
        out: list[int] = []
        t = start_us
        while True:
            end = self.period_at(t).end_us
            if end > until_us:
                return out
            out.append(end)
            t = end

    def _origin(self, t_us: int) -> Snapshot:
        if t_us >= self.ent.last_reset_us:
            return Snapshot(self.ent.last_reset_us, dict(self.ent.reset_balances or {}), self.ent.reset_overage)
        return Snapshot(min(self.measured_us, self.ent.last_reset_us), {})

    # -- states -----------------------------------------------------------------------------

    def start_of(self, period: Period, rollups: Rollups) -> PeriodStart:
        """The state as ``period``'s first segment starts: from the run's origin, period by
        period, each period's start cached (so a new period costs one period's run)."""
        p = period.start_us
        memo = self._memo
        if memo is not None and memo[0] == p:
            return memo[1]
        origin = self._origin(p)
        state = self._cache.get((self._key, origin.at_us), lambda: self._first(origin, rollups))
        for boundary in self.resets(origin.at_us, p):
            state = self._cache.get((self._key, boundary), partial(self._next, state.snapshot, boundary, rollups))
        self._memo = (p, state)
        return state

    def _first(self, origin: Snapshot, rollups: Rollups) -> PeriodStart:
        _, segs = run(self.credits, origin, (), origin.at_us, _spans(rollups), preserve_overage=False)
        snap = Snapshot(origin.at_us, segs[-1].balances_at_start, segs[-1].overage_at_start)
        return PeriodStart(snap, ZERO, origin.overage)

    def _next(self, before: Snapshot, boundary: int, rollups: Rollups) -> PeriodStart:
        """The period starting at ``boundary``, from the state at the start of the one before."""
        keep = self.ent.spec.preserve_overage_at_reset
        _, segs = run(self.credits, before, (boundary,), boundary, _spans(rollups), preserve_overage=keep)
        rolled, first = segs[-2], segs[-1]
        snap = Snapshot(boundary, first.balances_at_start, first.overage_at_start)
        return PeriodStart(snap, rolled.grant_usage, rolled.overage_at_start)

    def value(
        self,
        t_us: int,
        rollups: Rollups,
        *,
        live_usage: Decimal | None = None,
        project: bool = True,
        period: Period | None = None,
    ) -> Value:
        """The value as of ``t_us`` (through the end of its minute, as OpenMeter rounds it up).
        ``live_usage``: the usage of the whole period holding ``t_us`` (the live counter's), so
        the last segment needs no query; ``period``: that period, when the caller knows it."""
        period = self.period_at(t_us) if period is None else period
        begin = self.start_of(period, rollups)
        until = min(t_us - t_us % MINUTE_US + MINUTE_US, period.end_us)
        p = period.start_us

        def usage(a: int, b: int) -> Decimal:
            if b == until and live_usage is not None:
                return live_usage if a == p else EXACT.subtract(live_usage, rollups(p, a))
            return rollups(a, b)

        if self._quiet(p, until):
            used = usage(p, until)
            balance, overage, burnt = self._one_segment(begin.snapshot, used)
            granted = EXACT.add(begin.burnt, burnt)
        else:
            end, segs = run(self.credits, begin.snapshot, (), until, _spans(usage), preserve_overage=False)
            balance, _ = balance_at(self.credits, end)
            overage, used, granted = end.overage, ZERO, begin.burnt
            for seg in segs:
                used = EXACT.add(used, seg.usage)
                granted = EXACT.add(granted, seg.grant_usage)
        spec = self.ent.spec
        access = spec.is_unlimited or spec.is_soft_limit or balance > 0
        soft = spec.soft_limit is not None and used >= spec.soft_limit
        projected = projection(used, period, t_us) if project else None
        available = EXACT.add(granted, balance)
        return Value(access, used, available, balance, overage, soft, projected, period, carried=begin.carried)

    def _quiet(self, start_us: int, until_us: int) -> bool:
        """Whether no grant starts, ends or recurs in ``(start_us, until_us]``: then the period
        so far is one segment, and the burn order does not change the totals."""
        if self._recurring:
            return False
        i = bisect_right(self._events, start_us)
        return i == len(self._events) or self._events[i] > until_us

    def steady_until(self, t_us: int, end_us: int) -> int | None:
        """Until when values after ``t_us`` come from the grants active at ``t_us`` alone (no
        grant starts, ends or recurs before then, a minute to spare; at most ``end_us``), or
        None with recurring grants."""
        if self._recurring:
            return None
        i = bisect_right(self._events, t_us - t_us % MINUTE_US)
        return end_us if i == len(self._events) else min(end_us, self._events[i] - MINUTE_US)

    def _one_segment(self, snap: Snapshot, used: Decimal) -> tuple[Decimal, Decimal, Decimal]:
        """(balance, overage, what the grants covered) of one segment from ``snap``: the engine's
        burn of ``used`` plus the overage so far, summed (grants missing from ``snap`` start
        with their amount when active, as the engine starts them)."""
        total = ZERO
        for c in self.credits:
            if c.active_at(snap.at_us):
                have = snap.balances.get(c.id)
                total = EXACT.add(total, c.amount if have is None else have)
        need = EXACT.add(used, snap.overage)
        burnt = min(total, need) if need > 0 else ZERO
        return EXACT.subtract(total, burnt), EXACT.subtract(need, burnt) if need > burnt else ZERO, burnt

    def state_at_reset(self, at_us: int, rollups: Rollups, preserve: bool) -> tuple[Decimal, dict[str, Decimal]]:
        """The overage and each grant's balance at the start of the period a reset at ``at_us``
        (not before the current period) opens. The run resumes at the start of the period the
        reset ends (as OpenMeter resumes from its snapshot there), so ``preserve`` decides this
        reset only."""
        origin = self._origin(at_us)
        if at_us <= origin.at_us:
            return origin.overage, origin.balances
        begin = self.start_of(self.period_at(at_us - 1), rollups).snapshot
        _, segs = run(self.credits, begin, [at_us], at_us, _spans(rollups), preserve_overage=preserve)
        first = segs[-1]
        balances = {g: b for g, b in first.balances_at_start.items() if self._active(g, at_us)}
        return first.overage_at_start, balances

    def _active(self, grant_id: str, t_us: int) -> bool:
        return any(c.id == grant_id and c.active_at(t_us) for c in self.credits)

    def timeline(self, start_us: int, end_us: int, rollups: Rollups) -> list[Segment]:
        """The burndown's segments from ``start_us`` to ``end_us`` (split at ``start_us``)."""
        if start_us < self.measured_us:
            raise InvalidInput("`from` cannot be before the entitlement's measureUsageFrom", code="invalid_range")
        if end_us <= start_us:
            return []
        last, keep, spans = self.ent.last_reset_us, self.ent.spec.preserve_overage_at_reset, _spans(rollups)
        segments: list[Segment] = []
        origin = self._origin(start_us)
        if origin.at_us < last:
            until = min(end_us, last)
            resets = [t for t in self.resets(origin.at_us, until) if t < last]
            _, part = run(self.credits, origin, resets, until, spans, preserve_overage=keep, cuts=[start_us])
            segments.extend(part)
            if end_us <= last:
                return [s for s in segments if s.start_us >= start_us]
            segments[-1].reset = True
            origin = self._origin(last)
        resets = self.resets(origin.at_us, end_us)
        _, part = run(self.credits, origin, resets, end_us, spans, preserve_overage=keep, cuts=[start_us])
        segments.extend(part)
        return [s for s in segments if s.start_us >= start_us and not (s.start_us == s.end_us == start_us)]


def _spans(rollups: Rollups) -> Rollups:
    """``rollups`` with an empty span answered without a query."""
    return lambda a, b: ZERO if b <= a else rollups(a, b)
