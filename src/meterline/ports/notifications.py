"""Notification channels, rules and the log of fired events with their deliveries."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from meterline.domain.alerts.rules import Rule
from meterline.domain.notify.channels import Channel


@dataclass(frozen=True, slots=True)
class Attempt:
    at_us: int
    state: str
    status_code: int | None
    error: str | None
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str
    state: str  # PENDING, SUCCESS or FAILED
    attempts: int
    next_attempt_us: int | None
    updated_us: int
    log: builtins.list[Attempt]


@dataclass(frozen=True, slots=True)
class FiredEvent:
    id: str
    rule: str
    customer: str
    feature: str
    threshold: str
    period_start_us: int
    payload: bytes
    created_us: int
    deliveries: builtins.list[Delivery]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """``[start_us, end_us)`` on the fire time; each non-empty tuple keeps events matching one
    of its values."""

    start_us: int | None = None
    end_us: int | None = None
    rules: tuple[str, ...] = ()
    customers: tuple[str, ...] = ()
    features: tuple[str, ...] = ()


class ChannelRepository(Protocol):
    def put_channel(self, channel: Channel) -> None:
        """Store a new channel, or the new state of an existing one (same id)."""
        ...

    def channel(self, namespace: str, channel_id: str) -> Channel:
        """A live channel; ``NotFound`` ``channel_not_found``."""
        ...

    def channels(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Channel]:
        """By id."""
        ...

    def delete_channel(self, namespace: str, channel_id: str) -> None: ...


class RuleRepository(Protocol):
    def put_rule(self, rule: Rule) -> None:
        """Store a new rule, or the new state of an existing one (same id)."""
        ...

    def rule(self, namespace: str, rule_id: str, *, include_deleted: bool = False) -> Rule:
        """A live rule (a deleted one too with ``include_deleted``: the events it fired still
        name it); ``NotFound`` ``rule_not_found``."""
        ...

    def rules(self, namespace: str | None = None) -> builtins.list[Rule]:
        """Live rules of ``namespace`` (of all when None), by id."""
        ...

    def delete_rule(self, namespace: str, rule_id: str) -> None: ...


class EventLog(Protocol):
    def fire(
        self,
        namespace: str,
        rule: Rule,
        customer: str,
        feature: str,
        key: str,
        period_start_us: int,
        payload: Callable[[str], bytes],
        now_us: int,
        channels: Sequence[str],
    ) -> str | None:
        """Record an event once per (rule, customer, feature, key, period) with a PENDING
        delivery per channel, in one write; the new event id, or None if it had fired already.
        ``payload`` makes the body from the new event's id."""
        ...

    def series(
        self, namespace: str, rule_id: str, customer: str, feature: str, period_start_us: int
    ) -> builtins.list[str]:
        """The keys fired for (rule, customer, feature, period), oldest first."""
        ...

    def events(
        self, namespace: str, f: EventFilter, *, limit: int, offset: int
    ) -> tuple[int, builtins.list[FiredEvent]]:
        """(how many match, one page of them, newest first)."""
        ...

    def event(self, namespace: str, event_id: str) -> FiredEvent:
        """``NotFound`` ``notification_event_not_found``."""
        ...

    def resend(self, namespace: str, event_id: str, channels: Sequence[str] | None, now_us: int) -> None:
        """Put the chosen deliveries (all when None) back to PENDING, due now, with a fresh
        attempt budget; the attempt log keeps every earlier attempt."""
        ...
