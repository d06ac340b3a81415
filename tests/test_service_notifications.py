"""The notification service on the in-memory adapters: what it refuses, the views it answers
with, test firing and resend (each waking the dispatcher)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import msgspec
import pytest

from meterline.adapters.memory.entitlements import MemoryFeatures
from meterline.adapters.memory.notifications import MemoryNotifications
from meterline.domain.alerts.rules import RuleInput, Threshold
from meterline.domain.clock import FixedClock
from meterline.domain.entitlements.model import Feature, FeatureInput
from meterline.domain.errors import InvalidInput, NotFound
from meterline.domain.notify.channels import ChannelInput
from meterline.ports.notifications import EventFilter
from meterline.services.notifications import NotificationService

NS = "ns"
T0 = 1_772_366_400_000_000


@dataclass
class World:
    store: MemoryNotifications
    service: NotificationService
    wakes: list[int]


def world(*, allow_private: bool = False) -> World:
    clock, wakes = FixedClock(T0), []
    store, features = MemoryNotifications(clock.now_us), MemoryFeatures()
    features.add(Feature("f-1", NS, FeatureInput("api", "API"), T0))
    service = NotificationService(
        store, store, store, features, clock, allow_private_targets=allow_private, wake=lambda: wakes.append(1)
    )
    return World(store, service, wakes)


def rule_input(channels: list[str], features: list[str] | None = None) -> RuleInput:
    return RuleInput(
        "entitlements.balance.threshold",
        "r",
        channels,
        features=features,
        thresholds=[Threshold(Decimal(80), "PERCENT")],
    )


def test_webhooks_to_private_addresses_are_refused_unless_allowed() -> None:
    inp = ChannelInput("WEBHOOK", "hook", url="http://127.0.0.1:9/x")
    with pytest.raises(InvalidInput) as err:
        world().service.create_channel(NS, inp)
    assert err.value.code == "webhook_target_not_allowed"
    made = world(allow_private=True).service.create_channel(NS, inp)
    assert made.spec.signing_secret is not None and made.spec.signing_secret.startswith("whsec_")


def test_an_invalid_channel_is_refused_before_it_is_looked_up() -> None:
    w = world()
    with pytest.raises(InvalidInput):
        w.service.update_channel(NS, "missing", ChannelInput("WEBHOOK", "", url="ftp://x"))
    with pytest.raises(NotFound):
        w.service.update_channel(NS, "missing", ChannelInput("LOG", "log"))


def test_rules_may_name_only_existing_channels_and_show_their_types_and_features() -> None:
    w = world()
    channel = w.service.create_channel(NS, ChannelInput("LOG", "log"))
    with pytest.raises(InvalidInput) as err:
        w.service.create_rule(NS, rule_input([channel.id, "ghost"]))
    assert err.value.code == "invalid_rule"
    view = w.service.create_rule(NS, rule_input([channel.id], ["api", "gone"]))
    assert view.channel_types == {channel.id: "LOG"}
    assert view.features == [("f-1", "api"), ("gone", "gone")]
    w.service.delete_channel(NS, channel.id)
    assert w.service.rule(NS, view.rule.id).channel_types == {channel.id: "LOG"}  # deleted, still known
    assert w.service.rules(NS)[0].rule == view.rule


def test_test_firing_records_a_fresh_event_each_time_and_wakes_the_dispatcher() -> None:
    w = world()
    channel = w.service.create_channel(NS, ChannelInput("LOG", "log"))
    rule = w.service.create_rule(NS, rule_input([channel.id])).rule
    first, second = w.service.test(NS, rule.id), w.service.test(NS, rule.id)
    assert first.event.id != second.event.id and len(w.wakes) == 2
    body = msgspec.json.decode(first.event.payload)
    assert body["id"] == first.event.id and body["type"] == "entitlements.balance.threshold"
    data = body["data"]
    assert (data["kind"], data["rule"]) == (
        "test",
        {"id": rule.id, "name": "r", "type": "entitlements.balance.threshold"},
    )
    # OpenMeter's payload of the rule's type, with example data: a receiver built for real events parses it
    assert (data["entitlement"]["type"], data["feature"]["key"], data["subject"]["key"]) == (
        "metered",
        "example_feature",
        "example-customer",
    )
    assert (data["value"]["usage"], data["value"]["balance"], data["value"]["totalAvailableGrantAmount"]) == (
        50,
        50,
        100,
    )
    assert data["threshold"] is not None and data["customer"]["id"] == data["entitlement"]["customerId"]
    assert [d.channel for d in first.event.deliveries] == [channel.id]
    assert w.service.events(NS, EventFilter(), limit=10, offset=0)[0] == 2


def test_resend_needs_an_existing_event_and_wakes_the_dispatcher() -> None:
    w = world()
    with pytest.raises(NotFound):
        w.service.resend(NS, "nope", None)
    assert w.wakes == []
    channel = w.service.create_channel(NS, ChannelInput("LOG", "log"))
    rule = w.service.create_rule(NS, rule_input([channel.id])).rule
    event = w.service.test(NS, rule.id).event
    w.service.resend(NS, event.id, None)
    assert len(w.wakes) == 2


def test_deleting_needs_a_live_channel_or_rule() -> None:
    w = world()
    for delete in (w.service.delete_channel, w.service.delete_rule):
        with pytest.raises(NotFound):
            delete(NS, "missing")
