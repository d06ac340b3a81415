"""Notification channels, rules, fired events and their deliveries in memory; also the
dispatcher's :class:`~meterline.ports.deliveries.DeliveryStore`."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from ulid import ULID

from meterline.domain.alerts.rules import Rule
from meterline.domain.errors import NotFound
from meterline.domain.notify.channels import Channel
from meterline.ports.deliveries import PENDING, Due
from meterline.ports.notifications import Attempt, Delivery, EventFilter, FiredEvent


@dataclass
class _Event:
    namespace: str
    event: FiredEvent
    key: tuple[str, str, str, str, int]
    deliveries: dict[str, Delivery] = field(default_factory=dict)


class MemoryNotifications:
    def __init__(self, now_us: Callable[[], int]) -> None:
        self._now_us = now_us
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[Channel, int | None]] = {}  # id -> (channel, deleted_us)
        self._rules: dict[str, tuple[Rule, int | None]] = {}
        self._events: dict[str, _Event] = {}

    # -- channels and rules -----------------------------------------------------------------

    def put_channel(self, channel: Channel) -> None:
        with self._lock:
            self._channels[channel.id] = (channel, None)

    def channel(self, namespace: str, channel_id: str) -> Channel:
        return _live(self._channels, namespace, channel_id, "channel")

    def channels(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Channel]:
        with self._lock:
            rows = sorted(self._channels.items())
        return [c for _, (c, deleted) in rows if c.namespace == namespace and (include_deleted or deleted is None)]

    def delete_channel(self, namespace: str, channel_id: str) -> None:
        with self._lock:
            _delete(self._channels, namespace, channel_id, self._now_us())

    def put_rule(self, rule: Rule) -> None:
        with self._lock:
            self._rules[rule.id] = (rule, None)

    def rule(self, namespace: str, rule_id: str, *, include_deleted: bool = False) -> Rule:
        return _live(self._rules, namespace, rule_id, "rule", include_deleted=include_deleted)

    def rules(self, namespace: str | None = None) -> builtins.list[Rule]:
        with self._lock:
            rows = sorted(self._rules.items())
        return [r for _, (r, deleted) in rows if namespace in (None, r.namespace) and deleted is None]

    def delete_rule(self, namespace: str, rule_id: str) -> None:
        with self._lock:
            _delete(self._rules, namespace, rule_id, self._now_us())

    # -- fired events -----------------------------------------------------------------------

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
        unique = (rule.id, customer, feature, key, period_start_us)
        with self._lock:
            if any(e.key == unique for e in self._events.values()):
                return None
            event_id = str(ULID())
            fired = FiredEvent(
                event_id, rule.id, customer, feature, key, period_start_us, payload(event_id), now_us, []
            )
            due = {c: Delivery(c, PENDING, 0, now_us, now_us, []) for c in channels}
            self._events[event_id] = _Event(namespace, fired, unique, due)
            return event_id

    def series(
        self, namespace: str, rule_id: str, customer: str, feature: str, period_start_us: int
    ) -> builtins.list[str]:
        with self._lock:
            found = [
                e.event
                for e in self._events.values()
                if e.namespace == namespace and e.key == (rule_id, customer, feature, e.key[3], period_start_us)
            ]
        return [e.threshold for e in sorted(found, key=lambda e: (e.created_us, e.id))]

    def events(
        self, namespace: str, f: EventFilter, *, limit: int, offset: int
    ) -> tuple[int, builtins.list[FiredEvent]]:
        with self._lock:
            found = [self._shown(e) for e in self._events.values() if e.namespace == namespace and _matches(e, f)]
        found.sort(key=lambda e: (e.created_us, e.id), reverse=True)
        return len(found), found[offset : offset + limit]

    def event(self, namespace: str, event_id: str) -> FiredEvent:
        with self._lock:
            e = self._events.get(event_id)
            if e is None or e.namespace != namespace:
                raise NotFound(f"no notification event {event_id!r}", code="notification_event_not_found")
            return self._shown(e)

    def resend(self, namespace: str, event_id: str, channels: Sequence[str] | None, now_us: int) -> None:
        self.event(namespace, event_id)
        with self._lock:
            e = self._events[event_id]
            for c, d in e.deliveries.items():
                if channels is None or c in channels:
                    e.deliveries[c] = replace(d, state=PENDING, attempts=0, next_attempt_us=now_us, updated_us=now_us)

    def _shown(self, e: _Event) -> FiredEvent:
        return replace(e.event, deliveries=[e.deliveries[c] for c in sorted(e.deliveries)])

    # -- DeliveryStore ----------------------------------------------------------------------

    def due(self, now_us: int, limit: int) -> builtins.list[Due]:
        with self._lock:
            ready = [
                (d.next_attempt_us or 0, e.event.id, self._channels[c][0], d.attempts, e.event.payload)
                for e in self._events.values()
                for c, d in e.deliveries.items()
                if d.state == PENDING and (d.next_attempt_us or 0) <= now_us and c in self._channels
            ]
        ready.sort(key=lambda r: r[0])
        return [Due(event_id, channel, attempts, payload) for _, event_id, channel, attempts, payload in ready[:limit]]

    def record(
        self,
        event_id: str,
        channel_id: str,
        *,
        state: str,
        attempts: int,
        next_attempt_us: int | None,
        status_code: int | None,
        error: str | None,
        duration_ms: int | None,
    ) -> None:
        now = self._now_us()
        with self._lock:
            e = self._events[event_id]
            d = e.deliveries[channel_id]
            log = [*d.log, Attempt(now, state, status_code, error, duration_ms)]
            e.deliveries[channel_id] = Delivery(channel_id, state, attempts, next_attempt_us, now, log)


class _Owned(Protocol):
    @property
    def namespace(self) -> str: ...


T = TypeVar("T", bound=_Owned)


def _live(
    rows: dict[str, tuple[T, int | None]], namespace: str, id_: str, what: str, *, include_deleted: bool = False
) -> T:
    found = rows.get(id_)
    if found is None or (found[1] is not None and not include_deleted) or found[0].namespace != namespace:
        raise NotFound(f"no {what} {id_!r}", code=f"{what}_not_found")
    return found[0]


def _delete(rows: dict[str, tuple[T, int | None]], namespace: str, id_: str, at_us: int) -> None:
    found = rows.get(id_)
    if found is not None and found[0].namespace == namespace and found[1] is None:
        rows[id_] = (found[0], at_us)


def _matches(e: _Event, f: EventFilter) -> bool:
    x = e.event
    return (
        (f.start_us is None or x.created_us >= f.start_us)
        and (f.end_us is None or x.created_us < f.end_us)
        and (not f.rules or x.rule in f.rules)
        and (not f.customers or x.customer in f.customers)
        and (not f.features or x.feature in f.features)
    )
