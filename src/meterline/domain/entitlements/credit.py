"""The credit engine: how usage burns a metered entitlement's grants down (OpenMeter's rules).

Pure: grants, a starting snapshot, the resets in the run and a ``usage(from_us, to_us)``
callable come in; per-grant balances, the overage and the segments of the burndown come out.

1. Time is cut into *resets* (usage-period boundaries and API resets) and, between two resets,
   into *phases* at every grant effectiveAt, expiry and void (to the minute) and every grant
   recurrence. Within a phase the burn order does not change.
2. In a phase, the usage plus the overage so far burns the active grants in order: lower
   ``priority`` first, then the earlier expiry (a grant without one last), then the earlier
   creation, then the id. A grant effective at the phase start starts with its amount; an
   inactive (expired, voided, not yet effective) grant has no balance: what it had is lost.
   What no grant can cover is overage, carried to the next phase, where it burns first.
3. A recurring grant's balance is its amount again at each of its recurrences.
4. At a reset, each grant active then rolls over:
   ``min(maxRolloverAmount, max(balance, minRolloverAmount))``; the overage is kept (and burnt
   from the rolled-over balances at once) when the reset preserves it, else dropped.

Every sum is a ``Decimal``: no float rounding, as OpenMeter's ``float64`` has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from meterline.domain.decimals import EXACT
from meterline.domain.periods import Recurrence

ZERO = Decimal(0)
MINUTE_US = 60_000_000
Usage = Callable[[int, int], Decimal]
"""Usage in ``[from_us, to_us)``."""


@dataclass(frozen=True, slots=True)
class Credit:
    """A grant as the engine sees it (``issueAfterReset`` is one too: min = max = its amount)."""

    id: str
    amount: Decimal
    priority: int
    effective_us: int
    expires_us: int | None
    created_us: int
    voided_us: int | None = None
    max_rollover: Decimal = ZERO
    min_rollover: Decimal = ZERO
    recurrence: Recurrence | None = None
    ends_us: int | None = field(init=False, default=None)
    """Where the grant stops being active: its expiry or its void, whichever comes first."""

    def __post_init__(self) -> None:
        ends = [t for t in (self.expires_us, self.voided_us) if t is not None]
        object.__setattr__(self, "ends_us", max(min(ends), self.effective_us) if ends else None)

    def active_at(self, t_us: int) -> bool:
        end = self.ends_us
        return self.effective_us <= t_us and (end is None or t_us < end)

    def rollover(self, balance: Decimal) -> Decimal:
        return min(self.max_rollover, max(balance, self.min_rollover))

    def recurrences(self, start_us: int, end_us: int, *, inclusive: bool) -> list[int]:
        """Its recurrences in ``[start_us, end_us)`` (``]`` when ``inclusive``) while it is active."""
        rec = self.recurrence
        if rec is None:
            return []
        t = max(self.effective_us, start_us)
        p = rec.period_at_us(t)
        t = p.start_us if p.start_us == t else p.end_us
        found = []
        while (t < end_us or (inclusive and t == end_us)) and self.active_at(t):
            found.append(t)
            t = rec.period_at_us(t).end_us
        return found


def burn_order(c: Credit) -> tuple[int, bool, int, int, str]:
    return (c.priority, c.expires_us is None, c.expires_us or 0, c.created_us, c.id)


@dataclass(frozen=True, slots=True)
class Snapshot:
    at_us: int
    balances: dict[str, Decimal]
    overage: Decimal = ZERO


@dataclass(slots=True)
class Segment:
    """One phase of the burndown, or the instant of a reset (``rollover``: usage 0; its
    ``usages`` are the preserved overage burnt from the rolled-over balances)."""

    start_us: int
    end_us: int
    balances_at_start: dict[str, Decimal]
    overage_at_start: Decimal
    usage: Decimal = ZERO
    overage: Decimal = ZERO
    usages: list[tuple[str, Decimal]] = field(default_factory=list)
    rollover: bool = False
    reset: bool = False
    """The usage period ends with this segment."""

    @property
    def balances_at_end(self) -> dict[str, Decimal]:
        out = dict(self.balances_at_start)
        for grant_id, used in self.usages:
            out[grant_id] = EXACT.subtract(out[grant_id], used)
        return out

    @property
    def balance_at_start(self) -> Decimal:
        return _sum(self.balances_at_start.values())

    @property
    def balance_at_end(self) -> Decimal:
        return _sum(self.balances_at_end.values())

    @property
    def grant_usage(self) -> Decimal:
        return _sum(u for _, u in self.usages)


def _sum(values: Iterable[Decimal]) -> Decimal:
    total = ZERO
    for v in values:
        total = EXACT.add(total, v)
    return total


def run(
    credits: Sequence[Credit],
    start: Snapshot,
    resets: Sequence[int],
    until_us: int,
    usage: Usage,
    *,
    preserve_overage: bool,
    cuts: Sequence[int] = (),
) -> tuple[Snapshot, list[Segment]]:
    """Burn ``credits`` down from ``start`` to ``until_us``, resetting at each of ``resets``
    (after ``start.at_us``, not after ``until_us``; a reset at ``until_us`` leaves the state at
    the start of the new usage period). Grants missing from ``start`` start with their amount
    when active then. ``cuts`` only split segments (a history that starts mid-period)."""
    balances = dict(start.balances)
    for c in credits:
        if c.id not in balances:
            balances[c.id] = c.amount if c.active_at(start.at_us) else ZERO
    snap = Snapshot(start.at_us, balances, start.overage)
    bounds = [start.at_us, *sorted(set(resets)), until_us]
    segments: list[Segment] = []
    for i in range(len(bounds) - 1):
        a, b = bounds[i], bounds[i + 1]
        last = i == len(bounds) - 2
        relevant = [c for c in credits if _relevant(c, a, b) or c.id in snap.balances]
        inside = [t for t in cuts if a < t < b]
        snap, part = _between(relevant, snap, b, usage, inclusive_end=last, cuts=inside)
        segments.extend(part)
        if not last:
            part[-1].reset = True
            snap, rolled = _reset(relevant, snap, b, preserve_overage)
            segments.append(rolled)
    return snap, segments


def _relevant(c: Credit, start_us: int, end_us: int) -> bool:
    end = c.ends_us
    return c.effective_us <= end_us and (end is None or end >= start_us)


def _activity(credits: Sequence[Credit], start_us: int, end_us: int) -> list[int]:
    times = set()
    for c in credits:
        for t in (c.effective_us, c.expires_us, c.voided_us):
            if t is not None and start_us <= t < end_us:
                times.add(t - t % MINUTE_US)
    return sorted(times)


def _between(
    credits: Sequence[Credit],
    snap: Snapshot,
    until_us: int,
    usage: Usage,
    *,
    inclusive_end: bool,
    cuts: Sequence[int] = (),
) -> tuple[Snapshot, list[Segment]]:
    """One usage period (no reset inside): phases at activity changes and recurrences."""
    a = snap.at_us
    recurring: dict[int, list[str]] = {}
    for c in credits:
        for t in c.recurrences(a, until_us, inclusive=inclusive_end or a == until_us):
            recurring.setdefault(t, []).append(c.id)
    by_id = {c.id: c for c in credits}
    ordered = sorted(credits, key=burn_order)
    balances = dict(snap.balances)
    for gid in recurring.pop(a, []):
        balances[gid] = by_id[gid].amount
    cuts = sorted(set(_activity(credits, a, until_us)) | set(recurring) | set(cuts))
    phases = [(s, e) for s, e in zip([a, *cuts], [*cuts, until_us], strict=True) if e > s]
    if not phases or (recurring.get(until_us) and phases[-1][1] == until_us):
        phases.append((until_us, until_us) if phases else (a, until_us))
    overage = snap.overage
    segments = []
    for s, e in phases:
        for gid in recurring.get(s, []):
            balances[gid] = by_id[gid].amount
        active = []
        for c in ordered:
            if not c.active_at(s):
                balances[c.id] = ZERO
                continue
            if c.effective_us == s:
                balances[c.id] = c.amount
            active.append(c)
        seg = Segment(s, e, dict(balances), overage)
        seg.usage = usage(s, e) if e > s else ZERO
        overage = _burn(balances, active, EXACT.add(seg.usage, overage), seg.usages)
        seg.overage = overage
        segments.append(seg)
    return Snapshot(until_us, balances, overage), segments


def _burn(
    balances: dict[str, Decimal], ordered: Sequence[Credit], amount: Decimal, out: list[tuple[str, Decimal]]
) -> Decimal:
    """Burn ``amount`` from ``balances`` in ``ordered`` order; what is left is overage."""
    for c in ordered:
        have = balances.get(c.id, ZERO)
        if have <= 0 or amount <= 0:
            continue
        used = min(have, amount)
        balances[c.id] = EXACT.subtract(have, used)
        amount = EXACT.subtract(amount, used)
        out.append((c.id, used))
    return amount if amount > 0 else ZERO


def _reset(credits: Sequence[Credit], snap: Snapshot, at_us: int, preserve: bool) -> tuple[Snapshot, Segment]:
    """Roll each grant active at ``at_us`` over; burn the preserved overage from the result."""
    by_id = {c.id: c for c in credits}
    rolled = dict(snap.balances)
    for gid, bal in snap.balances.items():
        c = by_id.get(gid)
        if c is not None and c.active_at(at_us):
            rolled[gid] = c.rollover(bal)
    carried = snap.overage if preserve else ZERO
    seg = Segment(at_us, at_us, dict(rolled), carried, rollover=True)
    balances = dict(rolled)
    overage = _burn(balances, sorted(credits, key=burn_order), carried, seg.usages) if carried > 0 else carried
    seg.overage = overage
    return Snapshot(at_us, balances, overage), seg


def balance_at(credits: Sequence[Credit], snap: Snapshot) -> tuple[Decimal, dict[str, Decimal]]:
    """The balance of ``snap`` (of the grants active at its instant) and each such grant's."""
    by_id = {c.id: c for c in credits}
    kept = {g: b for g, b in snap.balances.items() if g in by_id and by_id[g].active_at(snap.at_us)}
    return _sum(kept.values()), kept
