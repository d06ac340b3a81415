"""Alert delivery: channels, Slack payloads and the dispatcher, against a real local HTTP receiver.

The receiver verifies every request with the reference ``standardwebhooks`` library and counts
deliveries by ``webhook-id``. ``MemoryDeliveryStore`` is the in-memory test double of the
``DeliveryStore`` port; its ``resend`` shows the reset a real store's resend should make.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest
from standardwebhooks.webhooks import Webhook

from meterline.domain.clock import FixedClock
from meterline.domain.errors import InvalidInput
from meterline.domain.notify import payloads
from meterline.domain.notify.channels import Channel, ChannelInput, new_channel, update_channel, validate_channel
from meterline.ports.deliveries import PENDING, DeliveryStore, Due
from meterline.services.dispatch import FAILED, SUCCESS, Dispatcher, backoff, clip

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ALERT: dict[str, Any] = {
    "id": "01JNQ0000000000000000000AB",
    "type": "entitlements.balance.threshold",
    "timestamp": "2026-03-20T10:00:00Z",
    "data": {
        "subject": {"key": "acme"},
        "customer": {"key": "acme", "id": "01C"},
        "feature": {"key": "api_calls"},
        "entitlement": {"currentUsagePeriod": {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}},
        "value": {"usage": 800, "balance": 200, "overage": 0, "hasAccess": True},
        "threshold": {"type": "PERCENT", "value": 80},
        "kind": "threshold",
    },
}
BODY = json.dumps(ALERT).encode()


# --- the test double of the DeliveryStore port --------------------------------------------------


@dataclass
class Row:
    channel: Channel
    payload: bytes
    state: str = PENDING
    attempts: int = 0
    next_attempt_us: int | None = 0
    status_code: int | None = None
    error: str | None = None
    duration_ms: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class MemoryDeliveryStore:
    """In-memory deliveries keyed by (event id, channel id); safe to use from the dispatcher thread."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}
        self._lock = threading.Lock()

    def add(self, event_id: str, channel: Channel, payload: bytes = BODY, at_us: int = 0) -> None:
        with self._lock:
            self.rows[(event_id, channel.id)] = Row(channel, payload, next_attempt_us=at_us)

    def resend(self, event_id: str, channel_id: str, now_us: int) -> None:
        """A manual resend: due now with a fresh attempt budget; history and event id are kept."""
        with self._lock:
            row = self.rows[(event_id, channel_id)]
            row.state, row.attempts, row.next_attempt_us = PENDING, 0, now_us

    def due(self, now_us: int, limit: int) -> list[Due]:
        with self._lock:
            ready = [
                (row.next_attempt_us or 0, key, row)
                for key, row in self.rows.items()
                if row.state == PENDING and (row.next_attempt_us or 0) <= now_us
            ]
            ready.sort(key=lambda item: (item[0], item[1]))
            return [Due(key[0], row.channel, row.attempts, row.payload) for _, key, row in ready[:limit]]

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
        with self._lock:
            row = self.rows[(event_id, channel_id)]
            row.state, row.attempts, row.next_attempt_us = state, attempts, next_attempt_us
            row.status_code, row.error, row.duration_ms = status_code, error, duration_ms
            row.history.append({"state": state, "attempts": attempts, "next": next_attempt_us, "status": status_code})


# --- a real receiver -----------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int


class Receiver:
    """An HTTP server on a free local port; answers ``fail_first`` requests with 500, then 200."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret, self.fail_first, self.delay = secret, 0, 0.0
        self.requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            Webhook(self.secret).verify(body, headers, json_parse=False)
            verified = True
        except Exception:
            verified = False
        time.sleep(self.delay)
        status = 500 if len(self.requests) < self.fail_first else 200
        self.requests.append(Received(headers, body, verified, status))
        try:
            request.send_response(status)
            request.end_headers()
            request.wfile.write(b"boom " * 1000 if status == 500 else b"ok")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def delivered(self) -> dict[str, int]:
        """Successful deliveries per webhook-id."""
        counts: dict[str, int] = {}
        for r in self.requests:
            if r.status == 200:
                counts[r.headers["webhook-id"]] = counts.get(r.headers["webhook-id"], 0) + 1
        return counts

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def clock() -> FixedClock:
    # Real "now": the reference library rejects timestamps more than 5 minutes off the wall clock.
    return FixedClock(time.time_ns() // 1000)


@pytest.fixture
def store() -> MemoryDeliveryStore:
    return MemoryDeliveryStore()


def webhook(url: str, **changes: Any) -> Channel:
    spec = ChannelInput(type="WEBHOOK", name="hook", url=url, signing_secret=SECRET)
    return new_channel(changes.pop("id", "ch1"), "default", msgspec.structs.replace(spec, **changes), 0)


def dispatcher(store: DeliveryStore, clock: FixedClock, **options: Any) -> Dispatcher:
    settings: dict[str, Any] = {
        "timeout": 2.0,
        "max_attempts": 4,
        "backoff_initial": 1.0,
        "backoff_max": 5.0,
        "rand": lambda: 1.0,
        "allow_private_targets": True,  # the receivers listen on 127.0.0.1
    }
    return Dispatcher(store, clock, **(settings | options))


def step(d: Dispatcher, store: MemoryDeliveryStore, clock: FixedClock, key: tuple[str, str]) -> int:
    """Jump the clock to the delivery's next attempt and run once."""
    next_us = store.rows[key].next_attempt_us or clock.now_us()
    clock.advance((next_us - clock.now_us()) / 1e6)
    return d.run_once()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- webhooks ------------------------------------------------------------------------------------


def test_delivered_once_signed_and_recorded(receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock) -> None:
    store.add("ev1", webhook(receiver.url))
    d = dispatcher(store, clock)
    assert d.run_once() == 1
    assert d.run_once() == 0
    d.close()
    assert receiver.delivered() == {"ev1": 1}
    (req,) = receiver.requests
    assert req.verified and req.body == BODY
    assert req.headers["content-type"] == "application/json"
    assert req.headers["webhook-timestamp"] == str(clock.now_us() // 1_000_000)
    row = store.rows[("ev1", "ch1")]
    assert (row.state, row.attempts, row.next_attempt_us, row.status_code, row.error) == (SUCCESS, 1, None, 200, None)
    assert row.duration_ms is not None and row.duration_ms >= 0


def test_retries_keep_the_webhook_id_and_deliver_once(
    receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock
) -> None:
    receiver.fail_first = 2
    store.add("ev1", webhook(receiver.url))
    d = dispatcher(store, clock)
    for _ in range(3):
        assert step(d, store, clock, ("ev1", "ch1")) == 1
    assert d.run_once() == 0
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["ev1"] * 3
    assert all(r.verified for r in receiver.requests)
    assert receiver.delivered() == {"ev1": 1}
    assert [(h["state"], h["attempts"], h["status"]) for h in store.rows[("ev1", "ch1")].history] == [
        (PENDING, 1, 500),
        (PENDING, 2, 500),
        (SUCCESS, 3, 200),
    ]


def test_backoff_grows_and_caps_then_gives_up(
    receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock
) -> None:
    receiver.fail_first = 100
    store.add("ev1", webhook(receiver.url))
    d = dispatcher(store, clock, max_attempts=5)
    delays = []
    for _ in range(5):
        step(d, store, clock, ("ev1", "ch1"))
        row = store.rows[("ev1", "ch1")]
        delays.append(None if row.next_attempt_us is None else (row.next_attempt_us - clock.now_us()) / 1e6)
    assert delays == [1.0, 2.0, 4.0, 5.0, None]
    row = store.rows[("ev1", "ch1")]
    assert (row.state, row.attempts, row.status_code) == (FAILED, 5, 500)
    assert row.error is not None and len(row.error) <= 200
    assert row.error.startswith("HTTP 500 Internal Server Error: boom boom")
    assert d.run_once() == 0
    assert len(receiver.requests) == 5 and receiver.delivered() == {}


def test_backoff_jitter_stays_in_the_upper_half() -> None:
    assert [backoff(n, 1.0, 5.0, rand=lambda: 0.0) for n in (1, 2, 3, 4, 10)] == [0.5, 1.0, 2.0, 2.5, 2.5]
    assert [backoff(n, 1.0, 5.0, rand=lambda: 1.0) for n in (1, 2, 3, 4, 10)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff(10_000, 1.0, 60.0) <= 60.0


def test_resend_after_failure_delivers_with_the_same_id(
    receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock
) -> None:
    receiver.fail_first = 1
    store.add("ev1", webhook(receiver.url))
    d = dispatcher(store, clock, max_attempts=1)
    d.run_once()
    assert store.rows[("ev1", "ch1")].state == FAILED
    store.resend("ev1", "ch1", clock.now_us())
    assert d.run_once() == 1
    assert store.rows[("ev1", "ch1")].state == SUCCESS
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["ev1", "ev1"]


def test_unreachable_url_is_pending_then_failed(store: MemoryDeliveryStore, clock: FixedClock) -> None:
    store.add("ev1", webhook(f"http://127.0.0.1:{closed_port()}/hook"))
    d = dispatcher(store, clock, max_attempts=2)
    d.run_once()
    row = store.rows[("ev1", "ch1")]
    assert (row.state, row.attempts, row.status_code) == (PENDING, 1, None)
    assert row.error is not None and row.error.startswith("ConnectError")
    step(d, store, clock, ("ev1", "ch1"))
    assert (row.state, row.attempts, row.next_attempt_us) == (FAILED, 2, None)


def test_timeout_is_a_failed_attempt(receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock) -> None:
    receiver.delay = 1.0
    store.add("ev1", webhook(receiver.url))
    dispatcher(store, clock, timeout=0.2).run_once()
    row = store.rows[("ev1", "ch1")]
    assert (row.state, row.error) == (PENDING, "timed out after 0.2s")


def test_custom_headers_arrive(receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock) -> None:
    store.add("ev1", webhook(receiver.url, custom_headers={"Authorization": "Bearer t0k", "X-Team": "billing"}))
    dispatcher(store, clock).run_once()
    (req,) = receiver.requests
    assert (req.headers["authorization"], req.headers["x-team"]) == ("Bearer t0k", "billing")
    assert req.verified


def test_slack_format_sends_a_signed_slack_message(
    receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock
) -> None:
    store.add("ev1", webhook(receiver.url, format="slack"))
    dispatcher(store, clock).run_once()
    (req,) = receiver.requests
    message = json.loads(req.body)
    assert set(message) == {"text", "blocks"}
    assert "acme used 80% of api_calls (800 of 1000) — period 2026-03-01 → 2026-04-01" in message["text"]
    assert req.verified and store.rows[("ev1", "ch1")].state == SUCCESS


def test_slack_format_with_a_broken_payload_fails_without_sending(
    receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock
) -> None:
    store.add("ev1", webhook(receiver.url, format="slack"), payload=b"not json")
    dispatcher(store, clock).run_once()
    row = store.rows[("ev1", "ch1")]
    assert (row.state, row.attempts, row.error) == (FAILED, 1, "alert payload is not a JSON object")
    assert receiver.requests == []


def test_disabled_channel_is_recorded_failed_without_an_attempt(
    receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock
) -> None:
    store.add("ev1", webhook(receiver.url, disabled=True))
    assert dispatcher(store, clock).run_once() == 0
    row = store.rows[("ev1", "ch1")]
    assert (row.state, row.attempts, row.error) == (FAILED, 0, "channel disabled")
    assert receiver.requests == []


def test_one_failing_delivery_does_not_stop_the_others(
    receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add("ev1", webhook(receiver.url, id="bad"))
    store.add("ev2", webhook(receiver.url, id="good"))
    real_record = store.record

    def record(event_id: str, channel_id: str, **kw: Any) -> None:
        if channel_id == "bad":
            raise RuntimeError("disk full")
        real_record(event_id, channel_id, **kw)

    monkeypatch.setattr(store, "record", record)
    assert dispatcher(store, clock).run_once() == 1  # "bad" keeps coming back as due; tried once per run
    assert store.rows[("ev2", "good")].state == SUCCESS


def test_an_unexpected_error_counts_as_a_failed_attempt(store: MemoryDeliveryStore, clock: FixedClock) -> None:
    def explode(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("bug")

    store.add("ev1", webhook("https://x.test/hook"))
    with httpx.Client(transport=httpx.MockTransport(explode)) as client:
        assert dispatcher(store, clock, client=client, max_attempts=2).run_once() == 1
    row = store.rows[("ev1", "ch1")]
    assert (row.state, row.attempts, row.error) == (PENDING, 1, "internal error (RuntimeError)")


# --- LOG channel ---------------------------------------------------------------------------------


def test_log_channel_writes_a_structured_record(
    store: MemoryDeliveryStore, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    channel = new_channel("log1", "default", ChannelInput(type="LOG", name="audit"), 0)
    store.add("ev1", channel)
    with caplog.at_level(logging.INFO, logger="meterline.alerts"):
        assert dispatcher(store, clock).run_once() == 1
    (record,) = [r for r in caplog.records if r.name == "meterline.alerts"]
    assert record.getMessage() == "entitlements.balance.threshold ev1"
    assert (record.__dict__["event_id"], record.__dict__["channel_id"]) == ("ev1", "log1")
    assert record.__dict__["alert"] == ALERT and json.dumps(record.__dict__["alert"])
    assert store.rows[("ev1", "log1")].state == SUCCESS


# --- the thread ----------------------------------------------------------------------------------


def wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_thread_delivers_on_wake_and_survives_store_errors(
    receiver: Receiver, store: MemoryDeliveryStore, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_due, calls = store.due, []

    def flaky_due(now_us: int, limit: int) -> list[Due]:
        calls.append(now_us)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return real_due(now_us, limit)

    monkeypatch.setattr(store, "due", flaky_due)
    d = dispatcher(store, clock, poll_interval=30.0)
    d.start()
    wait_for(lambda: len(calls) >= 1)
    store.add("ev1", webhook(receiver.url))
    d.wake()
    wait_for(lambda: receiver.delivered() == {"ev1": 1})
    started = time.monotonic()
    d.close()
    assert time.monotonic() - started < 15  # close() interrupts the 30 s poll (half of it tells them apart)


def test_close_with_an_external_client_leaves_it_open(store: MemoryDeliveryStore, clock: FixedClock) -> None:
    with httpx.Client() as client:
        dispatcher(store, clock, client=client).close()
        assert not client.is_closed


def test_bad_settings_are_rejected(store: MemoryDeliveryStore, clock: FixedClock) -> None:
    with pytest.raises(ValueError):
        dispatcher(store, clock, max_attempts=0)
    with pytest.raises(ValueError):
        dispatcher(store, clock, backoff_initial=10.0, backoff_max=1.0)


def test_clip_is_one_short_line() -> None:
    assert clip("a\n  b") == "a b"
    assert len(clip("x" * 500)) == 200


# --- channels ------------------------------------------------------------------------------------


def test_channel_input_is_camel_case_on_the_wire() -> None:
    raw = b'{"type":"WEBHOOK","name":"n","url":"https://x.test/h","customHeaders":{"X-A":"1"},"signingSecret":"s"}'
    inp = msgspec.json.decode(raw, type=ChannelInput)
    assert (inp.custom_headers, inp.signing_secret, inp.format) == ({"X-A": "1"}, "s", "standard")


def test_validation_lists_every_problem() -> None:
    inp = ChannelInput(
        type="WEBHOOK",
        name=" ",
        url="ftp://x.test",
        signing_secret="whsec_!!!",
        custom_headers={"Webhook-Signature": "x", "Content-Type": "text/plain", "bad name": "v", "X-Ok": "a\r\nb"},
    )
    with pytest.raises(InvalidInput) as exc:
        validate_channel(inp)
    assert exc.value.code == "invalid_channel"
    problems = exc.value.extra["problems"]
    assert len(problems) == 7, problems
    assert any("name" in p for p in problems) and any("url" in p for p in problems)


@pytest.mark.parametrize(
    ("inp", "problem"),
    [
        (ChannelInput(type="WEBHOOK", name="n"), "needs a url"),
        (ChannelInput(type="WEBHOOK", name="n", url="https://"), "absolute http"),
        (ChannelInput(type="LOG", name="n", url="https://x.test"), "must not have a url"),
        (ChannelInput(type="LOG", name="n", format="slack"), "WEBHOOK channels only"),
        (ChannelInput(type="LOG", name="n", signing_secret="MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "whsec_"),
        (ChannelInput(type="LOG", name="n", signing_secret="whsec_AAAA"), "24-64 bytes"),
        (ChannelInput(type="LOG", name="n", custom_headers={"X-A": "caf\u00e9"}), "printable ASCII"),
        (ChannelInput(type="LOG", name="n", custom_headers={"X-A": "v\n"}), "printable ASCII"),
        (ChannelInput(type="LOG", name="n", custom_headers={"X-A\n": "v"}), "not a valid HTTP header name"),
    ],
)
def test_validation_problem(inp: ChannelInput, problem: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        validate_channel(inp)
    assert any(problem in p for p in exc.value.extra["problems"])


def test_new_webhook_gets_a_secret_and_update_keeps_it() -> None:
    created = new_channel("c", "ns", ChannelInput(type="WEBHOOK", name="n", url="https://x.test/h"), 5)
    secret = created.spec.signing_secret
    assert secret is not None and secret.startswith("whsec_")
    validate_channel(created.spec)
    updated = update_channel(created, ChannelInput(type="WEBHOOK", name="m", url="https://y.test/h"), 9)
    assert (updated.spec.signing_secret, updated.spec.name) == (secret, "m")
    assert (updated.created_us, updated.updated_us) == (5, 9)
    assert new_channel("l", "ns", ChannelInput(type="LOG", name="n"), 0).spec.signing_secret is None


# --- Slack payloads ------------------------------------------------------------------------------


def test_slack_message_reads_like_a_sentence() -> None:
    message = payloads.slack(ALERT)
    assert message["text"] == (
        "Usage threshold reached: acme used 80% of api_calls (800 of 1000) — period 2026-03-01 → 2026-04-01"
    )
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "context"]
    assert "threshold 80% · has access" in message["blocks"][2]["elements"][0]["text"]


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({}, "Usage alert: a customer: alert on a feature"),
        (
            {"kind": "spike", "subject": {"key": "s"}, "value": {"usage": "12.5"}},
            "Usage spike: s used 12.5 of a feature",
        ),
        (
            {"customer": {"key": "c"}, "feature": {"key": "f"}, "value": {"usage": 1200, "balance": 0, "overage": 200}},
            "Usage alert: c used 120% of f (1200 of 1000)",
        ),
        (
            {"customer": {"key": "c"}, "value": {"usage": 1, "balance": 2}},
            "Usage alert: c used 33.3% of a feature (1 of 3)",
        ),
        (
            {"customer": {"key": "a<b>&"}, "value": None, "entitlement": "x"},
            "Usage alert: a&lt;b&gt;&amp;: alert on a feature",
        ),
        (
            {"entitlement": {"currentUsagePeriod": {"from": "2026-03-01T09:30:00+01:00", "to": "later"}}},
            "Usage alert: a customer: alert on a feature — period 2026-03-01 09:30 → later",
        ),
    ],
)
def test_slack_message_handles_missing_and_odd_fields(data: dict[str, Any], text: str) -> None:
    message = payloads.slack({"data": data})
    assert message["text"] == text
    assert msgspec.json.encode(message)


def test_slack_threshold_as_number() -> None:
    data = {**ALERT["data"], "threshold": {"type": "NUMBER", "value": 750}, "value": {"usage": 800, "hasAccess": False}}
    context = payloads.slack({"data": data})["blocks"][2]["elements"][0]["text"]
    assert context.startswith("threshold 750 · access denied")
