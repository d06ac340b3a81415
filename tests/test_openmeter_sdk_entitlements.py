"""The real OpenMeter Python SDK (``openmeter==1.0.0b236``) against a real ``meterline serve`` process:
subjects, features, entitlements (values, grants, reset, history, override), notifications and
the customer portal.

Requests are built by the SDK except where noted. One SDK defect shapes this file: its generated
``_operations.py`` defines ``class SubjectsOperations`` twice, and the second (subjects CRUD)
replaces the first (the subject *entitlement* operations: ``post``, ``list``, ``get``, ``delete``,
``override``, ``get_grants``, ``create_grant``, ``get_entitlement_value``,
``get_entitlement_history``, ``reset``), so ``client.subjects`` cannot reach them.
``subject_entitlements()`` re-creates the first class from the SDK's own source, so those
calls still go through the SDK's request builders and response models.

Time layout. The server's clock is real. Metered entitlements have monthly periods anchored a day
before the test starts, so the current period runs from then for a month and the usage events,
two minutes before now, sit well inside it whatever the date.
"""

from __future__ import annotations

import http.server
import inspect
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODES, Server, mode_server
from corehttp.exceptions import HttpResponseError, ResourceNotFoundError
from dateutil.relativedelta import relativedelta
from openmeter import Client
from openmeter._generated.operations import _operations as sdk_operations

TOKENS, OTHER = "sdk_tokens", "sdk_other"
ALICE, BOB = "alice", "bob"
SOURCE = "sdk-entitlements"


def status_and_body(pipeline_response: Any, deserialized: Any, _headers: Any) -> tuple[int, Any]:
    """``cls=`` hook for SDK operations: keep the HTTP status next to the parsed body."""
    return pipeline_response.http_response.status_code, deserialized


def subject_entitlements(client: Client) -> Any:
    """The SDK's shadowed subject-entitlement operations, bound to ``client``'s pipeline.

    The request builders have the same defect (``build_subjects_list_request`` and friends are
    defined twice, the subjects CRUD ones last), so the entitlement builders are re-created
    too, from the first ``build_subjects_post_request`` up to the subjects CRUD list builder.
    """
    lines = inspect.getsource(sdk_operations).splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("def build_subjects_post_request"))
    last = next(i for i in range(first, len(lines)) if lines[i].startswith("def build_subjects_list_request(**"))
    start = next(i for i, line in enumerate(lines) if line.startswith("class SubjectsOperations"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("class "))
    namespace = dict(vars(sdk_operations))
    for chunk in (lines[first:last], lines[start:end]):
        exec(compile("\n".join(chunk), sdk_operations.__file__, "exec"), namespace)
    ops = namespace["SubjectsOperations"]
    assert hasattr(ops, "get_entitlement_value"), "the SDK's first SubjectsOperations changed"
    return ops(client._client, client._config, client._serialize, client._deserialize)


def wire(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def wire_ms(t: datetime) -> str:
    """The server's time format: RFC 3339 in UTC with milliseconds."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def event(subject: str, t: datetime, tokens: Any, model: str = "gpt-4", type_: str = "prompt") -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "source": SOURCE,
        "specversion": "1.0",
        "type": type_,
        "subject": subject,
        "time": wire(t),
        "data": {"tokens": tokens, "model": model},
    }


@dataclass
class World:
    """A server with two meters, two subjects and a metered feature on ``sdk_tokens`` (gpt-4 only)."""

    server: Server
    client: Client
    ents: Any
    feature: Any
    now: datetime

    @property
    def anchor(self) -> datetime:
        """Where the metered entitlements' monthly periods start: a day before now."""
        return (self.now - timedelta(days=1)).replace(second=0, microsecond=0)  # periods start on a minute

    def http(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {token or self.server.key}"})


@pytest.fixture(params=MODES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A real server in each storage mode (these tests hold for both); both shared servers let
    the webhook receivers of the notification tests listen on 127.0.0.1."""
    yield from mode_server(request, tmp_path)


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = Client(endpoint=server.url, token=server.key, retry_total=0)
    yield c
    c.close()


@pytest.fixture
def world(server: Server, client: Client) -> World:
    now = datetime.now(UTC)
    for slug, event_type in ((TOKENS, "prompt"), (OTHER, "other")):
        client.meters.create(
            {
                "slug": slug,
                "aggregation": "SUM",
                "eventType": event_type,
                "valueProperty": "$.tokens",
                "groupBy": {"model": "$.model"},
            }
        )
    client.subjects.upsert([{"key": ALICE, "displayName": "Alice"}, {"key": BOB}])
    feature = client.features.create(
        {
            "key": "gpt4_tokens",
            "name": "GPT-4 tokens",
            "meterSlug": TOKENS,
            "meterGroupByFilters": {"model": "gpt-4"},
            "metadata": {"tier": "pro"},
        }
    )
    return World(server, client, subject_entitlements(client), feature, now)


def metered(w: World, limit: int = 100, **extra: Any) -> Any:
    body = {
        "type": "metered",
        "featureKey": w.feature.key,
        "issueAfterReset": limit,
        "isSoftLimit": False,
        "usagePeriod": {"interval": "MONTH", "anchor": wire(w.anchor)},
        "measureUsageFrom": "CURRENT_PERIOD_START",  # the events since the anchor count
        **extra,
    }
    return w.ents.post(ALICE, body, cls=status_and_body)


def ingest(w: World, *events: dict[str, Any]) -> None:
    assert w.client.events.ingest_events(list(events), cls=status_and_body) == (204, None)


# --------------------------------------------------------------------------------------------
# subjects
# --------------------------------------------------------------------------------------------


def test_subjects_upsert_list_get_delete(client: Client) -> None:
    status, upserted = client.subjects.upsert(
        [{"key": ALICE, "displayName": "Alice", "metadata": {"hubspotId": "123"}}, {"key": BOB}], cls=status_and_body
    )
    assert status == 200
    assert [(s.key, s.display_name) for s in upserted] == [(ALICE, "Alice"), (BOB, None)]
    alice = upserted[0]
    assert len(alice.id) == 26 and alice.metadata == {"hubspotId": "123"}
    assert isinstance(alice.created_at, datetime) and alice.updated_at >= alice.created_at

    # upsert again: same id, new display name
    (again,) = client.subjects.upsert([{"key": ALICE, "displayName": "Alice B."}])
    assert (again.id, again.display_name) == (alice.id, "Alice B.")

    assert sorted(s.key for s in client.subjects.list()) == [ALICE, BOB]
    for ref in (ALICE, alice.id):
        got = client.subjects.get(ref)
        assert (got.id, got.key, got.display_name) == (alice.id, ALICE, "Alice B.")

    assert client.subjects.delete(BOB, cls=status_and_body) == (204, None)
    assert [s.key for s in client.subjects.list()] == [ALICE]
    with pytest.raises(ResourceNotFoundError):
        client.subjects.get(BOB)


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------


def test_features_create_list_get_delete(world: World) -> None:
    w, f = world, world.feature
    assert (f.key, f.name, f.meter_slug, f.meter_group_by_filters) == (
        "gpt4_tokens",
        "GPT-4 tokens",
        TOKENS,
        {"model": "gpt-4"},
    )
    assert f.metadata == {"tier": "pro"} and len(f.id) == 26 and f.archived_at is None
    status, plain = w.client.features.create({"key": "sso", "name": "Single sign-on"}, cls=status_and_body)
    assert status == 201 and plain.meter_slug is None

    # ListFeaturesResult is a union (array or page): the SDK leaves its items as dicts
    listed = w.client.features.list()
    assert sorted(x["key"] for x in listed) == ["gpt4_tokens", "sso"]
    assert [x["key"] for x in w.client.features.list(meter_slug=[TOKENS])] == ["gpt4_tokens"]
    for ref in (f.id, f.key):
        assert w.client.features.get(ref).id == f.id

    assert w.client.features.delete(plain.id, cls=status_and_body) == (204, None)
    assert [x["key"] for x in w.client.features.list()] == ["gpt4_tokens"]
    archived = {x["key"]: x for x in w.client.features.list(include_archived=True)}
    assert archived["sso"]["archivedAt"] is not None
    with pytest.raises(HttpResponseError) as exc:
        w.client.features.create({"key": "Not A Key", "name": "x"})
    assert exc.value.status_code == 400


# --------------------------------------------------------------------------------------------
# entitlements: create, list, get, value, delete
# --------------------------------------------------------------------------------------------


def test_entitlements_create_list_get_delete(world: World) -> None:
    """Entitlement responses are a union (metered | static | boolean): the SDK returns dicts."""
    w = world
    status, ent = metered(w, 100, isSoftLimit=True)
    assert status == 201
    assert (ent["type"], ent["featureKey"], ent["featureId"], ent["subjectKey"]) == (
        "metered",
        w.feature.key,
        w.feature.id,
        ALICE,
    )
    assert (ent["issueAfterReset"], ent["isSoftLimit"], ent["isUnlimited"]) == (100, True, False)
    assert ent["usagePeriod"]["interval"] == "MONTH"
    start, end = w.anchor, w.anchor + relativedelta(months=1)
    assert ent["currentUsagePeriod"] == {"from": wire_ms(start), "to": wire_ms(end)}

    w.client.features.create({"key": "sso", "name": "SSO"})
    w.client.features.create({"key": "seats", "name": "Seats"})
    status, boolean = w.ents.post(ALICE, {"type": "boolean", "featureKey": "sso"}, cls=status_and_body)
    assert status == 201 and boolean["type"] == "boolean"
    static = w.ents.post(BOB, {"type": "static", "featureKey": "seats", "config": '{"seats": 5}'})
    assert (static["type"], static["subjectKey"], static["config"]) == ("static", BOB, '{"seats": 5}')

    everything = w.client.entitlements.list()
    assert sorted((e["subjectKey"], e["type"]) for e in everything) == [
        (ALICE, "boolean"),
        (ALICE, "metered"),
        (BOB, "static"),
    ]
    assert [e["id"] for e in w.client.entitlements.list(subject=[BOB])] == [static["id"]]
    assert [e["id"] for e in w.client.entitlements.list(feature=["sso"])] == [boolean["id"]]
    assert sorted(e["type"] for e in w.ents.list(ALICE)) == ["boolean", "metered"]
    assert w.client.entitlements.get(ent["id"])["id"] == ent["id"]
    assert w.ents.get(ALICE, ent["id"])["featureKey"] == w.feature.key

    value = w.ents.get_entitlement_value(ALICE, "sso")
    assert value.has_access is True and value.usage is None
    static_value = w.ents.get_entitlement_value(BOB, static["id"])
    assert (static_value.has_access, static_value.config) == (True, '{"seats": 5}')

    assert w.ents.delete(ALICE, boolean["id"], cls=status_and_body) == (204, None)
    assert [e["type"] for e in w.ents.list(ALICE)] == ["metered"]
    with pytest.raises(ResourceNotFoundError):
        w.ents.get(ALICE, boolean["id"])
    # a second live entitlement for the same subject and feature is a conflict
    with pytest.raises(HttpResponseError) as exc:
        metered(w)
    assert exc.value.status_code == 409


def test_entitlement_value_from_ingested_usage(world: World) -> None:
    w = world
    _, ent = metered(w, 100)
    ent_id = ent["id"]
    t = w.now - timedelta(minutes=2)
    ingest(
        w,
        event(ALICE, t, 30),
        event(ALICE, t, "12.5"),
        event(ALICE, t, 1000, model="gpt-3"),  # outside the feature's meterGroupByFilters
        event(BOB, t, 7),  # another subject
        event(ALICE, t, 500, type_="other"),  # another meter
    )
    for ref in (ent_id, w.feature.key):
        v = w.ents.get_entitlement_value(ALICE, ref)
        assert (v.usage, v.balance, v.overage, v.total_available_grant_amount, v.has_access) == (
            42.5,
            57.5,
            0,
            100,
            True,
        )

    ingest(w, event(ALICE, t, 60))
    v = w.ents.get_entitlement_value(ALICE, ent_id)
    assert (v.usage, v.balance, v.overage, v.has_access) == (102.5, 0, 2.5, False)
    # a point in time before the usage
    before = w.ents.get_entitlement_value(ALICE, ent_id, time=t - timedelta(minutes=1))
    assert (before.usage, before.balance, before.has_access) == (0, 100, True)


# --------------------------------------------------------------------------------------------
# grants, reset, history, override
# --------------------------------------------------------------------------------------------


def test_grants_create_list_void(world: World) -> None:
    w = world
    _, ent = metered(w, 10)
    ent_id = ent["id"]
    ingest(w, event(ALICE, w.now - timedelta(minutes=2), 15))
    assert w.ents.get_entitlement_value(ALICE, ent_id).has_access is False

    effective = (w.now - timedelta(minutes=5)).replace(microsecond=0)
    status, grant = w.ents.create_grant(
        ALICE,
        ent_id,
        {
            "amount": 20,
            "priority": 1,
            "effectiveAt": wire(effective),
            "expiration": {"duration": "MONTH", "count": 1},
            "metadata": {"reason": "goodwill"},
        },
        cls=status_and_body,
    )
    assert status == 201
    assert (grant.entitlement_id, grant.amount, grant.priority, grant.metadata) == (
        ent_id,
        20,
        1,
        {"reason": "goodwill"},
    )
    assert (grant.expiration.duration, grant.expiration.count) == ("MONTH", 1)
    # OpenMeter counts effectiveAt to the minute
    assert grant.effective_at == effective.replace(second=0) and grant.voided_at is None
    v = w.ents.get_entitlement_value(ALICE, ent_id)
    assert (v.usage, v.balance, v.total_available_grant_amount, v.has_access) == (15, 15, 30, True)

    # as OpenMeter lists the grant it creates for issueAfterReset (annotated so), with a ULID
    (issued,) = [
        g.id for g in w.ents.get_grants(ALICE, ent_id) if g.annotations and g.annotations.get("issueAfterReset")
    ]
    assert re.fullmatch(r"[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}", issued)
    assert {g.id for g in w.ents.get_grants(ALICE, ent_id)} == {issued, grant.id}
    assert {g.id for g in w.ents.get_grants(ALICE, w.feature.key)} == {issued, grant.id}
    assert {g.id for g in w.client.grants.list()} == {issued, grant.id}

    assert w.client.grants.delete(grant.id, cls=status_and_body) == (204, None)
    assert [g.id for g in w.ents.get_grants(ALICE, ent_id)] == [issued]
    voided = {g.id: g for g in w.ents.get_grants(ALICE, ent_id, include_deleted=True)}
    assert set(voided) == {issued, grant.id} and voided[grant.id].voided_at is not None
    v = w.ents.get_entitlement_value(ALICE, ent_id)
    # the grant (expiring first at equal priority) took the 15; voided, its 5 are lost, and the
    # limit of 10 (OpenMeter's issueAfterReset grant) is untouched
    assert (v.balance, v.has_access) == (10, True)


def test_reset_and_history(world: World) -> None:
    w = world
    _, ent = metered(w, 100)
    ent_id = ent["id"]
    t = (w.now - timedelta(minutes=2)).replace(second=0, microsecond=0)
    ingest(w, event(ALICE, t, 40), event(ALICE, t + timedelta(seconds=30), 2))

    history = w.ents.get_entitlement_history(
        ALICE, ent_id, window_size="MINUTE", from_parameter=t, to=t + timedelta(minutes=2)
    )
    windows = [(h.period.from_property, h.usage, h.balance_at_start) for h in history.windowed_history]
    assert windows[0] == (t, 42, 100)
    assert sum(Decimal(str(h.usage)) for h in history.windowed_history) == 42
    (segment,) = history.burndown_history
    assert (segment.usage, segment.balance_at_start, segment.balance_at_end, segment.overage) == (42, 100, 58, 0)

    assert w.ents.reset(ALICE, ent_id, {"retainAnchor": True}, cls=status_and_body) == (204, None)
    v = w.ents.get_entitlement_value(ALICE, ent_id)
    assert (v.usage, v.balance, v.has_access) == (0, 100, True)
    got = w.ents.get(ALICE, ent_id)
    assert datetime.fromisoformat(got["lastReset"]) > t
    ingest(w, event(ALICE, datetime.now(UTC), 5))
    assert w.ents.get_entitlement_value(ALICE, ent_id).usage == 5


def test_override(world: World) -> None:
    w = world
    _, ent = metered(w, 100)
    ent_id = ent["id"]
    status, replaced = w.ents.override(
        ALICE,
        w.feature.key,
        {"type": "metered", "featureKey": w.feature.key, "issueAfterReset": 5, "usagePeriod": {"interval": "DAY"}},
        cls=status_and_body,
    )
    assert status == 201
    assert (
        replaced["id"] != ent_id and replaced["issueAfterReset"] == 5 and replaced["usagePeriod"]["interval"] == "DAY"
    )
    assert [e["id"] for e in w.ents.list(ALICE)] == [replaced["id"]]
    with pytest.raises(ResourceNotFoundError):
        w.ents.get(ALICE, ent_id)
    # a boolean entitlement replacing the metered one, by entitlement id
    swapped = w.ents.override(ALICE, replaced["id"], {"type": "boolean", "featureKey": w.feature.key})
    assert swapped["type"] == "boolean"
    assert w.ents.get_entitlement_value(ALICE, w.feature.key).has_access is True


# --------------------------------------------------------------------------------------------
# notifications: channels, rules, events
# --------------------------------------------------------------------------------------------


class Receiver:
    """A local webhook endpoint that answers 200 and records every request body."""

    def __init__(self) -> None:
        received: list[bytes] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(self.rfile.read(int(self.headers.get("content-length") or 0)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.received) >= count, f"{len(self.received)} deliveries, expected {count}"
        return self.received

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def wait_for_state(w: World, event_id: str, state: str, attempts: int, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = w.client.notification_events.get(event_id)
        status = got.delivery_status[0]
        if (status.state, len(status.attempts)) == (state, attempts) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_notification_channels(world: World, receiver: Receiver) -> None:
    """Channel responses are the NotificationChannel union: the SDK returns dicts."""
    w = world
    status, channel = w.client.notification_channels.create(
        {"type": "WEBHOOK", "name": "ops", "url": receiver.url, "customHeaders": {"X-Team": "ops"}},
        cls=status_and_body,
    )
    assert status == 201
    assert (channel["type"], channel["name"], channel["url"], channel["disabled"]) == (
        "WEBHOOK",
        "ops",
        receiver.url,
        False,
    )
    assert channel["customHeaders"] == {"X-Team": "ops"} and channel["signingSecret"].startswith("whsec_")

    # a paginated response is a Mapping model, so `.items` is dict.items: read "items" by key
    page = w.client.notification_channels.list()
    assert (page.total_count, page.page) == (1, 1)
    assert [c["id"] for c in page["items"]] == [channel["id"]]
    assert w.client.notification_channels.get(channel["id"])["name"] == "ops"

    updated = w.client.notification_channels.update(
        channel["id"], {"type": "WEBHOOK", "name": "ops-2", "url": receiver.url, "disabled": True}
    )
    assert (updated["id"], updated["name"], updated["disabled"]) == (channel["id"], "ops-2", True)
    # the secret is shown once, at creation: never in a list, get or update answer
    assert "signingSecret" not in updated and "signingSecret" not in w.client.notification_channels.get(channel["id"])

    with pytest.raises(HttpResponseError) as exc:
        w.client.notification_channels.create({"type": "WEBHOOK", "name": "bad", "url": "not a url"})
    assert exc.value.status_code == 400

    assert w.client.notification_channels.delete(channel["id"], cls=status_and_body) == (204, None)
    assert w.client.notification_channels.list()["items"] == []
    with pytest.raises(ResourceNotFoundError):
        w.client.notification_channels.get(channel["id"])


def test_notification_rules_and_events(world: World, receiver: Receiver) -> None:
    w = world
    channel = w.client.notification_channels.create({"type": "WEBHOOK", "name": "ops", "url": receiver.url})
    threshold = {
        "type": "entitlements.balance.threshold",
        "name": "80% used",
        "channels": [channel["id"]],
        "features": [w.feature.key],
        "thresholds": [{"value": 80, "type": "PERCENT"}],
    }
    status, rule = w.client.notification_rules.create(threshold, cls=status_and_body)
    assert status == 201
    assert (rule["type"], rule["name"], rule["disabled"]) == ("entitlements.balance.threshold", "80% used", False)
    assert rule["channels"] == [{"id": channel["id"], "type": "WEBHOOK"}]
    assert [f["key"] for f in rule["features"]] == [w.feature.key]
    assert rule["thresholds"] == [{"value": 80, "type": "PERCENT"}]

    page = w.client.notification_rules.list()
    assert [r["id"] for r in page["items"]] == [rule["id"]] and page.total_count == 1
    assert w.client.notification_rules.get(rule["id"])["name"] == "80% used"
    updated = w.client.notification_rules.update(
        rule["id"], {**threshold, "name": "90% used", "thresholds": [{"value": 90, "type": "PERCENT"}]}
    )
    assert (updated["id"], updated["name"], updated["thresholds"]) == (
        rule["id"],
        "90% used",
        [{"value": 90, "type": "PERCENT"}],
    )

    # test: a fresh event, delivered through the rule's channel
    status, fired = w.client.notification_rules.test(rule["id"], cls=status_and_body)
    assert status == 201
    assert fired.rule["id"] == rule["id"] and fired.type == "entitlements.balance.threshold"
    assert [d.channel.id for d in fired.delivery_status] == [channel["id"]]
    assert fired.delivery_status[0].channel.type == "WEBHOOK"
    receiver.wait_for(1)
    delivered = wait_for_state(w, fired.id, "SUCCESS", 1)
    status_ = delivered.delivery_status[0]
    assert (status_.state, status_.attempts[0].response.status_code) == ("SUCCESS", 200)

    events = w.client.notification_events.list(rule=[rule["id"]])
    assert [e.id for e in events["items"]] == [fired.id]
    assert w.client.notification_events.get(fired.id).payload["type"] == "entitlements.balance.threshold"

    assert w.client.notification_events.resend(fired.id, {}, cls=status_and_body) == (202, None)
    receiver.wait_for(2)
    assert receiver.received[0] == receiver.received[1]  # the same payload again
    again = wait_for_state(w, fired.id, "SUCCESS", 2)
    assert len(again.delivery_status[0].attempts) == 2

    with pytest.raises(ResourceNotFoundError):
        w.client.notification_events.get("01J2KNP1YTXQRXHTDJ4KPR7PZ0")
    assert w.client.notification_rules.delete(rule["id"], cls=status_and_body) == (204, None)
    assert w.client.notification_rules.list()["items"] == []
    with pytest.raises(ResourceNotFoundError):
        w.client.notification_rules.get(rule["id"])


# --------------------------------------------------------------------------------------------
# portal: tokens and the token holder's meter query
# --------------------------------------------------------------------------------------------


def test_portal_tokens_and_query(world: World) -> None:
    w = world
    t = (w.now - timedelta(minutes=2)).replace(second=0, microsecond=0)
    ingest(
        w,
        event(ALICE, t, 3),
        event(ALICE, t, 4, model="gpt-3"),
        event(BOB, t, 100),
        event(ALICE, t, 50, type_="other"),
    )
    tokens = w.client.portal.portal_tokens
    status, created = tokens.create({"subject": ALICE, "allowedMeterSlugs": [TOKENS]}, cls=status_and_body)
    assert status == 200
    assert (created.subject, created.allowed_meter_slugs, created.expired) == (ALICE, [TOKENS], False)
    assert created.token and created.expires_at > datetime.now(UTC)
    bob = tokens.create({"subject": BOB})
    listed = tokens.list()
    assert sorted((x.id, x.subject) for x in listed) == sorted([(created.id, ALICE), (bob.id, BOB)])
    assert all(x.token is None for x in listed)  # the secret is shown once, at creation

    portal = Client(endpoint=w.server.url, token=created.token, retry_total=0)
    try:
        span = {"from_parameter": t, "to": t + timedelta(minutes=1)}
        result = portal.portal.portal_meters.query_json(TOKENS, **span)
        assert [(r.subject, Decimal(str(r.value))) for r in result.data] == [(ALICE, Decimal(7))]  # split by subject
        by_model = portal.portal.portal_meters.query_json(TOKENS, group_by=["model"], **span)
        assert sorted((r.group_by["model"], r.value) for r in by_model.data) == [("gpt-3", 4), ("gpt-4", 3)]
        # another subject's usage stays out even when asked for (filterCustomerId is ignored)
        forced = portal.portal.portal_meters.query_json(TOKENS, filter_customer_id=[BOB], **span)
        assert [r.value for r in forced.data] == [7]
        with pytest.raises(HttpResponseError) as exc:
            portal.portal.portal_meters.query_json(OTHER, **span)
        assert exc.value.status_code == 403
        # the portal token is no API key
        with pytest.raises(HttpResponseError) as exc:
            portal.meters.list()
        assert exc.value.status_code == 401

        assert tokens.invalidate({"id": created.id}, cls=status_and_body) == (204, None)
        with pytest.raises(HttpResponseError) as exc:
            portal.portal.portal_meters.query_json(TOKENS, **span)
        assert exc.value.status_code == 401
    finally:
        portal.close()
    # invalidate by subject
    tokens.invalidate({"subject": BOB})
    bob_portal = Client(endpoint=w.server.url, token=bob.token, retry_total=0)
    try:
        with pytest.raises(HttpResponseError) as exc:
            bob_portal.portal.portal_meters.query_json(TOKENS)
        assert exc.value.status_code == 401
    finally:
        bob_portal.close()
