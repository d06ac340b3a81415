"""Usage alerts end to end: rules fire from ingest, a real HTTP receiver verifies every
Standard Webhooks signature and counts deliveries; each threshold OpenMeter's rule picks fires
once, across retried events, receiver failures and a restart mid-period."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Api, build_api, free_port
from test_entitlements_api import ev, setup, value

from meterline.domain.errors import WebhookVerificationError
from meterline.domain.notify.signing import new_secret, verify

SECRET = new_secret()


class Receiver:
    """A webhook endpoint: verifies signatures, fails the first ``fail`` requests with 500."""

    def __init__(self, clock_s: Any) -> None:
        self.delivered: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self.bad_signatures = 0
        self.fail = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                msg_id = self.headers.get("webhook-id", "")
                receiver.requests.append(msg_id)
                try:
                    verify(SECRET, dict(self.headers), body, now=clock_s())
                except WebhookVerificationError:
                    receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.delivered.setdefault(msg_id, []).append(msgspec.json.decode(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def kinds(self) -> list[str]:
        out = []
        for bodies in self.delivered.values():
            data = bodies[0]["data"]
            t = data.get("threshold")
            out.append(f"{t['type']}:{t['value']}" if t else data["kind"])
        return sorted(out)


LOCAL = {"alerts": {"allow_private_webhook_targets": True}}  # the receivers listen on 127.0.0.1


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path, **LOCAL)


@pytest.fixture
def receiver(api: Api) -> Iterator[Receiver]:
    r = Receiver(lambda: api.clock.now_us() // 1_000_000)
    yield r
    r.server.shutdown()


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def wake(api: Api) -> None:
    api.client.app.state.ctx.dispatcher.wake()  # type: ignore[attr-defined]


def add_rule(api: Api, url: str, **rule: Any) -> tuple[str, str]:
    ch = api.client.post(
        "/api/v1/notification/channels",
        json={"type": "WEBHOOK", "name": "ops", "url": url, "signingSecret": SECRET},
        headers=api.headers(),
    )
    assert ch.status_code == 201, ch.text
    body = {"type": "entitlements.balance.threshold", "name": "usage", "channels": [ch.json()["id"]], **rule}
    r = api.client.post("/api/v1/notification/rules", json=body, headers=api.headers())
    assert r.status_code == 201, r.text
    return ch.json()["id"], r.json()["id"]


THRESHOLDS = [
    {"type": "PERCENT", "value": 50},
    {"type": "PERCENT", "value": 80},
    {"type": "NUMBER", "value": 90},
    {"type": "PERCENT", "value": 100},
]


def test_thresholds_fire_once_per_period_with_retries_and_failures(api: Api, receiver: Receiver) -> None:
    setup(api)
    add_rule(api, receiver.url(), thresholds=THRESHOLDS, features=["tokens"])
    api.post_events([ev("e1", tokens=40)])
    api.post_events([ev("e2", tokens=45)])  # 85: past 50% and 80%; as OpenMeter, the highest fires
    wait_for(lambda: len(receiver.delivered) == 1)
    assert receiver.kinds() == ["PERCENT:80"]
    api.post_events([ev("e1", tokens=40), ev("e2", tokens=45)])  # retried events: no new usage, no alert
    receiver.fail = 3
    api.post_events([ev("e3", tokens=20)])  # 105: past 90 and 100%: 100% fires; the receiver fails 3 times first
    wait_for(lambda: len(receiver.requests) >= 2)
    for _ in range(6):
        api.clock.advance(60)  # past the backoff
        wake(api)
        time.sleep(0.2)
        if len(receiver.delivered) == 2:
            break
    wait_for(lambda: len(receiver.delivered) == 2)
    assert receiver.kinds() == ["PERCENT:100", "PERCENT:80"]
    assert all(len(v) == 1 for v in receiver.delivered.values())
    assert receiver.bad_signatures == 0
    events = api.client.get("/api/v1/notification/events", headers=api.headers()).json()["items"]
    assert len(events) == 2
    attempts = sorted(len(e["deliveryStatus"][0]["attempts"]) for e in events)
    assert sum(attempts) == 2 + 3 and attempts[-1] == 4
    assert {e["deliveryStatus"][0]["state"] for e in events} == {"SUCCESS"}
    payload = receiver.delivered[events[0]["id"]][0]
    data = payload["data"]  # OpenMeter's balance-threshold payload: whole objects, not just keys
    assert data["customer"]["key"] == "acme" and data["subject"]["key"] == "acme"
    assert (data["feature"]["key"], data["feature"]["name"], data["feature"]["meterSlug"]) == (
        "tokens",
        "Tokens",
        "tokens",
    )
    assert (data["entitlement"]["type"], data["entitlement"]["issueAfterReset"]) == ("metered", 100)
    assert data["entitlement"]["currentUsagePeriod"] == {
        "from": "2026-03-01T00:00:00.000Z",
        "to": "2026-04-01T00:00:00.000Z",
    }
    assert data["value"]["hasAccess"] in (True, False) and data["value"]["usage"] in (85, 105)


def test_restart_mid_period_and_next_period(tmp_path: Path) -> None:
    gen = build_api(tmp_path, **LOCAL)
    api = next(gen)
    receiver = Receiver(lambda: api.clock.now_us() // 1_000_000)
    setup(api)
    add_rule(api, receiver.url(), thresholds=THRESHOLDS[:2])
    api.post_events([ev("e1", tokens=60)])
    wait_for(lambda: len(receiver.delivered) == 1)
    gen.close()
    gen = build_api(tmp_path, **LOCAL)  # restart mid-period
    api = next(gen)
    assert value(api)["usage"] == 60
    api.post_events([ev("e1", tokens=60), ev("e2", tokens=1)])
    wait_for(lambda: value(api)["usage"] == 61)
    time.sleep(0.3)
    assert receiver.kinds() == ["PERCENT:50"]
    api.post_events([ev("e3", tokens=30)])  # 91: 80% fires now, 50% does not fire again
    wait_for(lambda: len(receiver.delivered) == 2)
    api.clock.advance(31 * 86400)  # April: a new period
    api.post_events([ev("apr", time="2026-04-01T11:00:00Z", tokens=55)])
    wait_for(lambda: len(receiver.delivered) == 3)
    assert receiver.kinds() == ["PERCENT:50", "PERCENT:50", "PERCENT:80"]
    gen.close()
    receiver.server.shutdown()


def test_projected_and_anomaly_rules(api: Api, receiver: Receiver) -> None:
    setup(api, limit=1000)
    _, rule = add_rule(api, receiver.url(), thresholds=THRESHOLDS[:1])
    channel = api.client.get("/api/v1/notification/channels", headers=api.headers()).json()["items"][0]["id"]
    r = api.client.post(
        "/api/v1/notification/rules",
        headers=api.headers(),
        json={"type": "entitlements.usage.projected", "name": "p", "channels": [channel]},
    )
    assert r.status_code == 201, r.text
    api.post_events([ev("x", tokens=100)])  # day 0.5 of 31: too early to project
    time.sleep(0.3)
    assert receiver.delivered == {}
    api.clock.advance(4 * 86400)  # 4.5 days in, 13% of the month
    api.post_events([ev("y", time="2026-03-05T11:00:00Z", tokens=100)])  # 200 -> ~1378 projected
    wait_for(lambda: len(receiver.delivered) == 1)
    assert receiver.kinds() == ["projected"]
    anomaly = api.client.post(
        "/api/v1/notification/rules",
        headers=api.headers(),
        json={
            "type": "entitlements.usage.anomaly",
            "name": "a",
            "channels": [channel],
            "spikeFactor": 5,
            "minBaseline": "0.1",
        },
    )
    assert anomaly.status_code == 201, anomaly.text
    alerts = api.client.app.state.system.counting.alerts  # type: ignore[attr-defined]
    api.post_events([ev("z", time="2026-03-05T11:30:00Z", tokens=301)])  # hour 11:00 holds 401 (501 in all)
    # 501 of 1000 is past the 50% threshold: let it be delivered before the clock moves, or the
    # receiver would check its signature timestamp against a clock an hour away
    wait_for(lambda: len(receiver.delivered) == 2)
    api.clock.advance(3600)  # 2026-03-05T13:00Z; the last complete hour is 12:00-13:00
    assert alerts.scan_anomalies() == 0
    api.clock.advance(-3600)  # scan at 12:xx: last complete hour 11:00-12:00 = 400, baseline mean tiny
    assert alerts.scan_anomalies() == 1
    assert alerts.scan_anomalies() == 0  # once per hour
    wait_for(lambda: len(receiver.delivered) == 3)
    assert receiver.kinds() == ["PERCENT:50", "projected", "spike"]
    bad = api.client.post(
        "/api/v1/notification/rules",
        headers=api.headers(),
        json={"type": "entitlements.usage.anomaly", "name": "a", "channels": [channel]},
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_rule"
    assert rule


def test_resend_log_channel_and_rule_test(api: Api, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    setup(api)
    _, rule = add_rule(api, receiver.url(), thresholds=THRESHOLDS[:1])
    t = api.client.post(f"/api/v1/notification/rules/{rule}/test", headers=api.headers())
    assert t.status_code == 201, t.text
    wait_for(lambda: len(receiver.delivered) == 1)
    api.post_events([ev("a", tokens=51)])  # above 50% (OpenMeter: strictly above)
    wait_for(lambda: len(receiver.delivered) == 2)
    events = api.client.get("/api/v1/notification/events", headers=api.headers()).json()["items"]
    real = next(e for e in events if e["threshold"] == "PERCENT:50")
    r = api.client.post(f"/api/v1/notification/events/{real['id']}/resend", json={}, headers=api.headers())
    assert r.status_code == 202
    wait_for(lambda: len(receiver.delivered[real["id"]]) == 2)  # same webhook-id: receivers dedupe by it
    log = api.client.post("/api/v1/notification/channels", json={"type": "LOG", "name": "log"}, headers=api.headers())
    assert log.status_code == 201
    api.client.post(
        "/api/v1/notification/rules",
        headers=api.headers(),
        json={
            "type": "entitlements.balance.threshold",
            "name": "l",
            "channels": [log.json()["id"]],
            "thresholds": [{"type": "usage_value", "value": 60}],
        },
    )
    with caplog.at_level("INFO", logger="meterline.alerts"):
        api.post_events([ev("b", tokens=15)])
        wait_for(lambda: any(getattr(r, "alert", None) for r in caplog.records))
    bad = api.client.post(
        "/api/v1/notification/channels", json={"type": "WEBHOOK", "name": "x", "url": "ftp://x"}, headers=api.headers()
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_channel"
