"""Subscriptions and their billing windows.

A subscription binds a customer to one plan version from ``start`` until ``end`` (exclusive;
None while active). Billing periods recur from the billing anchor: local midnight of
``anchor_day`` (1-31) in the customer's IANA zone, stepped by the plan's cadence with
``meterline.domain.periods`` (a 29th-31st anchor clamps to shorter months' last day). The first and
last periods are clipped to ``start`` and ``end``; :func:`billing_windows` returns each clipped
window with the full period it came from, which is what ``price_period`` prorates flat fees by.

A plan change at instant ``t`` (:func:`change_plan`) ends the old subscription at ``t`` and
starts the new one at ``t`` with the same anchor and zone: each is billed for its own clipped
part of the period. Flat fees of each are prorated; usage is split at ``t``.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import msgspec

from meterline.domain.clock import known_zone, to_us
from meterline.domain.errors import InvalidInput, InvalidSubscription
from meterline.domain.identifiers import is_slug
from meterline.domain.periods import Period, Recurrence, recurrence


class Subscription(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """A customer on one plan version from ``start`` to ``end`` (exclusive)."""

    customer: str
    plan: str
    version: int
    start: datetime
    zone: str
    anchor_day: int = 1
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class BillingWindow:
    """A billing period and the part of it the subscription was active in."""

    period: Period
    window: Period

    @property
    def partial(self) -> bool:
        return self.window != self.period


def validate_subscription(sub: Subscription) -> list[str]:
    """Every problem with a subscription (empty when it is valid)."""
    problems = [] if sub.customer.strip() else ["customer is required"]
    if not is_slug(sub.plan) or sub.version < 1:
        problems.append("plan must be a plan key and version 1 or more")
    if not 1 <= sub.anchor_day <= 31:
        problems.append("anchorDay must be between 1 and 31")
    problems += _time_problems(sub)
    if known_zone(sub.zone) is None:
        problems.append(f"zone {sub.zone[:80]!r} is not an IANA time zone")
    return problems


def _time_problems(sub: Subscription) -> list[str]:
    if sub.start.utcoffset() is None:
        return ["start must carry a UTC offset"]
    if sub.end is None:
        return []
    if sub.end.utcoffset() is None:
        return ["end must carry a UTC offset"]
    return [] if to_us(sub.end) > to_us(sub.start) else ["end must be after start"]


def check_subscription(sub: Subscription) -> Subscription:
    problems = validate_subscription(sub)
    if problems:
        raise InvalidSubscription("Invalid subscription: " + "; ".join(problems), problems=problems)
    return sub


def billing_anchor(sub: Subscription) -> datetime:
    """Local midnight of ``anchor_day`` in the latest month (at or before ``start``) that has that day."""
    tz = ZoneInfo(sub.zone)
    local = sub.start.astimezone(tz)
    year, month = local.year, local.month
    while True:
        if sub.anchor_day <= calendar.monthrange(year, month)[1]:
            candidate = datetime(year, month, sub.anchor_day, tzinfo=tz)
            if to_us(candidate) <= to_us(sub.start):
                return candidate
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)


def schedule(sub: Subscription, cadence: str) -> Recurrence:
    """The billing periods of ``sub`` for a plan billed every ``cadence``."""
    return recurrence(cadence, billing_anchor(check_subscription(sub)), sub.zone)


def billing_windows(
    sub: Subscription, cadence: str, until: datetime, *, since: datetime | None = None
) -> list[BillingWindow]:
    """Every billing period that starts before ``until`` and overlaps the subscription, clipped to it.

    ``since`` (an instant inside the subscription) skips the periods that end at or before it, so
    a billing run does not walk a long subscription's history again."""
    return list(iter_billing_windows(sub, cadence, until, since=since))


def iter_billing_windows(
    sub: Subscription, cadence: str, until: datetime, *, since: datetime | None = None
) -> Iterator[BillingWindow]:
    """:func:`billing_windows` one at a time (a report over a long range stops when it is full)."""
    rec = schedule(sub, cadence)
    stop = to_us(until) if sub.end is None else min(to_us(until), to_us(sub.end))
    first = sub.start if since is None or to_us(since) <= to_us(sub.start) else since
    period = rec.period_at(first)
    while period.start_us < stop:
        yield BillingWindow(period, _clip(period, sub))
        if sub.end is not None and period.end_us >= to_us(sub.end):
            break
        period = rec.period_at_us(period.end_us)


def _clip(period: Period, sub: Subscription) -> Period:
    tz = period.start.tzinfo
    start = sub.start.astimezone(tz) if to_us(sub.start) > period.start_us else period.start
    end = sub.end.astimezone(tz) if sub.end is not None and to_us(sub.end) < period.end_us else period.end
    return Period(start, end)


def cancel(sub: Subscription, at: datetime) -> Subscription:
    """``sub`` ending at ``at`` (which must lie inside it)."""
    _inside(sub, at)
    return msgspec.structs.replace(sub, end=at)


def change_plan(sub: Subscription, at: datetime, plan: str, version: int) -> tuple[Subscription, Subscription]:
    """End ``sub`` at ``at`` and start the same customer on ``plan`` ``version`` there."""
    _inside(sub, at)
    new = msgspec.structs.replace(sub, plan=plan, version=version, start=at)
    return msgspec.structs.replace(sub, end=at), check_subscription(new)


def _inside(sub: Subscription, at: datetime) -> None:
    if at.utcoffset() is None:
        raise InvalidInput("the instant must carry a UTC offset", code="invalid_datetime")
    after_end = sub.end is not None and to_us(at) >= to_us(sub.end)
    if to_us(at) <= to_us(sub.start) or after_end:
        raise InvalidSubscription("the instant must lie strictly inside the subscription")


MINUTE_US = 60_000_000


def aligned(name: str, t: datetime) -> None:
    """Refuse an instant without an offset or off a whole minute (usage is kept per minute)."""
    if t.utcoffset() is None:
        raise InvalidInput(f"`{name}` must carry a UTC offset", code="invalid_datetime")
    if to_us(t) % MINUTE_US:
        raise InvalidInput(f"`{name}` must fall on a whole minute (usage is kept per minute)", code="unaligned_time")


def overlapping(new: Subscription, others: list[Subscription]) -> int | None:
    """The index of the first of ``others`` (the customer's subscriptions) that ``new`` overlaps."""
    for i, other in enumerate(others):
        ends_after = other.end is None or to_us(other.end) > to_us(new.start)
        if ends_after and (new.end is None or to_us(other.start) < to_us(new.end)):
            return i
    return None
