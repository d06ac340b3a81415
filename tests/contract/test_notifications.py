"""The ChannelRepository, RuleRepository, EventLog and DeliveryStore contracts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from meterline.domain.alerts.rules import Rule, RuleInput, Threshold
from meterline.domain.errors import NotFound
from meterline.domain.notify.channels import Channel, ChannelInput
from meterline.ports.notifications import EventFilter

NS = "default"
T = 1_772_366_400_000_000


def _channel(id_: str, namespace: str = NS) -> Channel:
    return Channel(id_, namespace, ChannelInput("LOG", f"log {id_}"), T, T)


def _rule(id_: str, channels: list[str], namespace: str = NS) -> Rule:
    spec = RuleInput(
        "entitlements.balance.threshold", f"rule {id_}", channels, thresholds=[Threshold(Decimal(80), "PERCENT")]
    )
    return Rule(id_, namespace, spec, T, T)


def _fire(n: Any, rule: Rule, customer: str = "acme", key: str = "80", at: int = T, period: int = 0) -> str | None:
    def payload(event_id: str) -> bytes:
        return msgspec.json.encode({"id": event_id, "type": rule.spec.type})

    return n.fire(NS, rule, customer, "api", key, period, payload, at, rule.spec.channels)


def test_channels_put_get_list_delete(notifications: Any) -> None:
    n = notifications
    for id_ in ("c2", "c1"):
        n.put_channel(_channel(id_))
    n.put_channel(_channel("c3", "other"))
    assert [c.id for c in n.channels(NS)] == ["c1", "c2"]
    renamed = msgspec.structs.replace(_channel("c1"), spec=ChannelInput("LOG", "renamed"), updated_us=T + 1)
    n.put_channel(renamed)
    assert n.channel(NS, "c1") == renamed
    n.delete_channel(NS, "c1")
    with pytest.raises(NotFound) as err:
        n.channel(NS, "c1")
    assert err.value.code == "channel_not_found"
    assert [c.id for c in n.channels(NS)] == ["c2"]
    assert [c.id for c in n.channels(NS, include_deleted=True)] == ["c1", "c2"]
    with pytest.raises(NotFound):
        n.channel(NS, "c3")  # another namespace's


def test_rules_put_get_list_delete(notifications: Any) -> None:
    n = notifications
    n.put_channel(_channel("c1"))
    n.put_rule(_rule("r2", ["c1"]))
    n.put_rule(_rule("r1", ["c1"]))
    n.put_rule(_rule("r9", ["c1"], "other"))
    assert [r.id for r in n.rules(NS)] == ["r1", "r2"]
    assert [r.id for r in n.rules()] == ["r1", "r2", "r9"]
    n.delete_rule(NS, "r2")
    with pytest.raises(NotFound) as err:
        n.rule(NS, "r2")
    assert err.value.code == "rule_not_found"
    assert n.rule(NS, "r1") == _rule("r1", ["c1"])
    # the events a deleted rule fired still name it
    assert n.rule(NS, "r2", include_deleted=True) == _rule("r2", ["c1"])
    with pytest.raises(NotFound):
        n.rule("other", "r2", include_deleted=True)  # another namespace's


def test_an_alert_fires_once_per_rule_customer_key_and_period(notifications: Any) -> None:
    n = notifications
    n.put_channel(_channel("c1"))
    rule = _rule("r1", ["c1"])
    n.put_rule(rule)
    first = _fire(n, rule)
    assert first is not None
    assert _fire(n, rule) is None
    assert _fire(n, rule, period=1) is not None
    assert _fire(n, rule, customer="globex") is not None
    event = n.event(NS, first)
    assert (event.rule, event.customer, event.feature, event.threshold) == ("r1", "acme", "api", "80")
    assert msgspec.json.decode(event.payload)["id"] == first
    [delivery] = event.deliveries
    assert (delivery.channel, delivery.state, delivery.attempts, delivery.log) == ("c1", "PENDING", 0, [])
    with pytest.raises(NotFound) as err:
        n.event("other", first)
    assert err.value.code == "notification_event_not_found"


def test_series_lists_the_keys_of_one_rule_customer_feature_and_period_oldest_first(notifications: Any) -> None:
    n = notifications
    n.put_channel(_channel("c1"))
    r1, r2 = _rule("r1", ["c1"]), _rule("r2", ["c1"])
    _fire(n, r1, key="PERCENT:80", at=T + 1)
    _fire(n, r1, key="PERCENT:50#1", at=T + 2)
    _fire(n, r1, key="PERCENT:80#2", at=T + 3)
    _fire(n, r1, key="PERCENT:80", at=T + 4, period=1)  # another period
    _fire(n, r1, "globex", key="PERCENT:90", at=T + 5)  # another customer
    _fire(n, r2, key="PERCENT:70", at=T + 6)  # another rule
    assert n.series(NS, "r1", "acme", "api", 0) == ["PERCENT:80", "PERCENT:50#1", "PERCENT:80#2"]
    assert n.series(NS, "r1", "acme", "api", 1) == ["PERCENT:80"]
    assert n.series(NS, "r1", "acme", "other", 0) == []
    assert n.series("other", "r1", "acme", "api", 0) == []


def test_events_filter_and_page_newest_first(notifications: Any) -> None:
    n = notifications
    n.put_channel(_channel("c1"))
    r1, r2 = _rule("r1", ["c1"]), _rule("r2", ["c1"])
    ids = [_fire(n, r1, "acme", "80", T + 1), _fire(n, r2, "globex", "90", T + 2), _fire(n, r1, "globex", "80", T + 3)]
    total, page = n.events(NS, EventFilter(), limit=2, offset=0)
    assert total == 3 and [e.id for e in page] == [ids[2], ids[1]]
    assert [e.id for e in n.events(NS, EventFilter(), limit=2, offset=2)[1]] == [ids[0]]
    assert n.events(NS, EventFilter(rules=("r1",)), limit=10, offset=0)[0] == 2
    assert [e.id for e in n.events(NS, EventFilter(customers=("acme", "nobody")), limit=9, offset=0)[1]] == [ids[0]]
    assert n.events(NS, EventFilter(features=("other",)), limit=9, offset=0) == (0, [])
    window = n.events(NS, EventFilter(start_us=T + 2, end_us=T + 3), limit=9, offset=0)
    assert [e.id for e in window[1]] == [ids[1]]


def test_deliveries_record_attempts_and_resend_requeues(notifications: Any, stores: Any) -> None:
    n = notifications
    n.put_channel(_channel("c1"))
    n.put_channel(_channel("c2"))
    rule = _rule("r1", ["c1", "c2"])
    event_id = _fire(n, rule)
    assert sorted((d.event_id, d.channel.id, d.attempts) for d in n.due(T, 10)) == [
        (event_id, "c1", 0),
        (event_id, "c2", 0),
    ]
    assert n.due(T - 1, 10) == []
    stores.clock.advance(1)
    for channel in ("c1", "c2"):
        n.record(
            event_id,
            channel,
            state="FAILED",
            attempts=3,
            next_attempt_us=None,
            status_code=500,
            error="boom",
            duration_ms=12,
        )
    assert n.due(T + 10_000_000, 10) == []
    n.resend(NS, event_id, ["c2"], T + 5)
    c1, c2 = n.event(NS, event_id).deliveries
    assert (c1.state, c1.attempts) == ("FAILED", 3)
    assert (c2.state, c2.attempts, c2.next_attempt_us) == ("PENDING", 0, T + 5)
    assert [(a.state, a.status_code, a.error, a.duration_ms) for a in c2.log] == [("FAILED", 500, "boom", 12)]
    assert [d.channel.id for d in n.due(T + 5, 10)] == ["c2"]
    n.resend(NS, event_id, None, T + 6)
    assert {d.state for d in n.event(NS, event_id).deliveries} == {"PENDING"}
