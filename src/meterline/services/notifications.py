"""Notification channels, rules and fired events: what may be saved, and what a caller sees.

Channels are validated and their webhook targets checked here before they are stored; a rule
may only name channels that exist. ``test`` fires a fresh event for a rule through its
channels, exactly as an alert would be recorded, and wakes the dispatcher.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec
from ulid import ULID

from meterline.domain.alerts.payload import test_payload
from meterline.domain.alerts.rules import Rule, RuleInput, validate_rule
from meterline.domain.clock import Clock
from meterline.domain.errors import InvalidInput, NotFound
from meterline.domain.notify import channels as notify
from meterline.domain.notify.channels import Channel, ChannelInput
from meterline.domain.notify.targets import check_url
from meterline.ports.entitlements import FeatureRepository
from meterline.ports.notifications import ChannelRepository, EventFilter, EventLog, FiredEvent, RuleRepository

_encode = msgspec.json.Encoder(decimal_format="number").encode


@dataclass(frozen=True, slots=True)
class RuleView:
    """A rule with what its answer shows of its channels (id -> type, None once gone) and
    features ((id, key); a feature that no longer exists shows its reference as both)."""

    rule: Rule
    channel_types: dict[str, str | None]
    features: builtins.list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class EventView:
    event: FiredEvent
    rule: RuleView
    channel_types: dict[str, str | None]


class NotificationService:
    def __init__(
        self,
        channels: ChannelRepository,
        rules: RuleRepository,
        events: EventLog,
        features: FeatureRepository,
        clock: Clock,
        *,
        allow_private_targets: bool,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._channels = channels
        self._rules = rules
        self._events = events
        self._features = features
        self._clock = clock
        self._allow_private = allow_private_targets
        self.wake = wake
        """Called after an event is fired or re-queued (the dispatcher delivers it now)."""

    # -- channels ---------------------------------------------------------------------------

    def allowed(self, inp: ChannelInput) -> ChannelInput:
        """``inp`` if it is a valid channel whose webhook target may be saved (see notify.targets)."""
        notify.validate_channel(inp)
        check_url(inp.url if inp.type == "WEBHOOK" else None, self._allow_private)
        return inp

    def create_channel(self, namespace: str, inp: ChannelInput) -> Channel:
        channel = notify.new_channel(str(ULID()), namespace, self.allowed(inp), self._clock.now_us())
        self._channels.put_channel(channel)
        return channel

    def update_channel(self, namespace: str, channel_id: str, inp: ChannelInput) -> Channel:
        self.allowed(inp)
        channel = notify.update_channel(self._channels.channel(namespace, channel_id), inp, self._clock.now_us())
        self._channels.put_channel(channel)
        return channel

    def rotate_secret(self, namespace: str, channel_id: str, secret: str | None) -> Channel:
        """A new signing secret (generated unless given)."""
        channel = notify.rotate_secret(self._channels.channel(namespace, channel_id), secret, self._clock.now_us())
        self._channels.put_channel(channel)
        return channel

    def channel(self, namespace: str, channel_id: str) -> Channel:
        return self._channels.channel(namespace, channel_id)

    def channels(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Channel]:
        return self._channels.channels(namespace, include_deleted=include_deleted)

    def delete_channel(self, namespace: str, channel_id: str) -> None:
        self._channels.channel(namespace, channel_id)
        self._channels.delete_channel(namespace, channel_id)

    # -- rules ------------------------------------------------------------------------------

    def create_rule(self, namespace: str, inp: RuleInput) -> RuleView:
        self._check_rule(namespace, inp)
        now = self._clock.now_us()
        rule = Rule(str(ULID()), namespace, inp, now, now)
        self._rules.put_rule(rule)
        return self._view(rule)

    def update_rule(self, namespace: str, rule_id: str, inp: RuleInput) -> RuleView:
        self._check_rule(namespace, inp)
        old = self._rules.rule(namespace, rule_id)
        rule = msgspec.structs.replace(old, spec=inp, updated_us=self._clock.now_us())
        self._rules.put_rule(rule)
        return self._view(rule)

    def _check_rule(self, namespace: str, inp: RuleInput) -> None:
        validate_rule(inp)
        known = {c.id for c in self._channels.channels(namespace)}
        missing = [c for c in inp.channels if c not in known]
        if missing:
            raise InvalidInput(f"unknown channels: {', '.join(missing)}", code="invalid_rule")

    def rule(self, namespace: str, rule_id: str) -> RuleView:
        return self._view(self._rules.rule(namespace, rule_id))

    def rules(self, namespace: str) -> builtins.list[RuleView]:
        return [self._view(r) for r in self._rules.rules(namespace)]

    def delete_rule(self, namespace: str, rule_id: str) -> None:
        self._rules.rule(namespace, rule_id)
        self._rules.delete_rule(namespace, rule_id)

    def _view(self, rule: Rule) -> RuleView:
        kinds = self._kinds(rule.namespace)
        features = [self._feature_ref(rule.namespace, f) for f in rule.spec.features or []]
        return RuleView(rule, {c: kinds.get(c) for c in rule.spec.channels}, features)

    def _kinds(self, namespace: str) -> dict[str, str | None]:
        return {c.id: c.type for c in self._channels.channels(namespace, include_deleted=True)}

    def _feature_ref(self, namespace: str, id_or_key: str) -> tuple[str, str]:
        try:
            f = self._features.get(namespace, id_or_key)
        except NotFound:
            return id_or_key, id_or_key
        return f.id, f.key

    # -- events -----------------------------------------------------------------------------

    def test(self, namespace: str, rule_id: str) -> EventView:
        """Fire a test event for a rule through its channels (a fresh event every call)."""
        rule = self._rules.rule(namespace, rule_id)
        now = self._clock.now_us()

        def payload(event_id: str) -> bytes:
            return test_payload(event_id, rule, now)

        event_id = self._events.fire(namespace, rule, "", "", f"test:{ULID()}", now, payload, now, rule.spec.channels)
        assert event_id is not None  # the key is fresh, so the event is new
        self.wake()
        return self.event(namespace, event_id)

    def events(self, namespace: str, f: EventFilter, *, limit: int, offset: int) -> tuple[int, list[EventView]]:
        total, events = self._events.events(namespace, f, limit=limit, offset=offset)
        return total, [self._event_view(namespace, e) for e in events]

    def event(self, namespace: str, event_id: str) -> EventView:
        return self._event_view(namespace, self._events.event(namespace, event_id))

    def _event_view(self, namespace: str, e: FiredEvent) -> EventView:
        # the rule that fired it, deleted since or not: its events stay listed
        rule = self._rules.rule(namespace, e.rule, include_deleted=True)
        return EventView(e, self._view(rule), self._kinds(namespace))

    def resend(self, namespace: str, event_id: str, channels: Sequence[str] | None) -> None:
        """Deliver again through ``channels`` (all of the event's when None)."""
        self._events.event(namespace, event_id)
        self._events.resend(namespace, event_id, channels, self._clock.now_us())
        self.wake()
