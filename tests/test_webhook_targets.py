"""Webhooks go to public addresses only unless the operator allows private ones: refused when a
channel is saved (address literals in every form, localhost names) and again at delivery, on the
address the host resolves to, with real receivers that prove nothing was sent."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import pytest
from conftest import Api, build_api
from test_dispatch import MemoryDeliveryStore, Receiver, webhook

from meterline.domain.clock import FixedClock
from meterline.domain.errors import InvalidInput
from meterline.domain.notify.targets import GuardedBackend, TargetRefused, address_allowed, check_url, vetted
from meterline.services.dispatch import FAILED, SUCCESS, Dispatcher

REFUSED = [
    "127.0.0.1",
    "127.255.255.254",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "0.0.0.0",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "2002:7f00:1::1",  # 6to4 around 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
    "2001:db8::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_allowed(ipaddress.ip_address(address))


REFUSED_URLS = [
    "http://127.0.0.1:9/hook",
    "http://127.1/",  # the resolver's short forms of 127.0.0.1
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://017700000001/",
    "http://[::1]:8080/",
    "http://[::ffff:127.0.0.1]/",
    "http://localhost:8888/api/v1/keys",
    "http://LOCALHOST./",
    "http://admin.localhost/",
    "http://169.254.169.254/latest/meta-data/",
    "https://10.0.0.5/",
    "http://0.0.0.0:8888/",
    "http://[fe80::1%25eth0]/",
    "http://224.0.0.1/",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_saving_a_private_target_is_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        check_url(url, allow_private=False)
    assert exc.value.code == "webhook_target_not_allowed"
    assert "alerts.allow_private_webhook_targets" in exc.value.detail
    check_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["https://example.com/hook", "http://8.8.8.8/", "https://hooks.slack.com/x", None])
def test_public_targets_and_names_can_be_saved(url: str | None) -> None:
    check_url(url, allow_private=False)  # names are checked at delivery, on what they resolve to


def test_the_api_refuses_private_targets_by_default(api: Api) -> None:
    channels = "/api/v1/notification/channels"
    for url in ("http://127.0.0.1:9/hook", "http://localhost/", "http://[::ffff:169.254.169.254]/"):
        r = api.client.post(channels, json={"type": "WEBHOOK", "name": "x", "url": url}, headers=api.headers())
        assert (r.status_code, r.json()["code"]) == (400, "webhook_target_not_allowed"), r.text
    ok = api.client.post(
        channels, json={"type": "WEBHOOK", "name": "x", "url": "https://example.com/h"}, headers=api.headers()
    )
    assert ok.status_code == 201
    r = api.client.put(
        f"{channels}/{ok.json()['id']}",
        json={"type": "WEBHOOK", "name": "x", "url": "http://10.0.0.1/h"},
        headers=api.headers(),
    )
    assert (r.status_code, r.json()["code"]) == (400, "webhook_target_not_allowed")
    # a malformed channel is still reported as such, with every problem
    r = api.client.post(channels, json={"type": "WEBHOOK", "name": " ", "url": "ftp://x"}, headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "invalid_channel")


def test_the_setting_allows_private_targets(tmp_path: Path) -> None:
    gen = build_api(tmp_path, alerts={"allow_private_webhook_targets": True})
    api = next(gen)
    body = {"type": "WEBHOOK", "name": "x", "url": "http://127.0.0.1:9/hook"}
    assert api.client.post("/api/v1/notification/channels", json=body, headers=api.headers()).status_code == 201
    gen.close()


# --- at delivery: the resolved address ---------------------------------------------------------


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(time.time_ns() // 1000)  # real "now": the receiver verifies signature timestamps


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def deliver(url: str, clock: FixedClock, allow_private: bool) -> tuple[MemoryDeliveryStore, Any]:
    store = MemoryDeliveryStore()
    store.add("ev1", webhook(url))
    d = Dispatcher(
        store,
        clock,
        timeout=2.0,
        max_attempts=5,
        backoff_initial=1.0,
        backoff_max=5.0,
        allow_private_targets=allow_private,
    )
    try:
        d.run_once()
    finally:
        d.close()
    return store, store.rows[("ev1", "ch1")]


def test_a_name_resolving_to_loopback_is_refused_at_delivery(receiver: Receiver, clock: FixedClock) -> None:
    # "localhost" resolves to 127.0.0.1 through the system resolver, as a rebound name would
    url = receiver.url.replace("127.0.0.1", "localhost")
    _, row = deliver(url, clock, allow_private=False)
    assert (row.state, row.attempts, row.status_code) == (FAILED, 1, None)  # at once: retrying cannot help
    assert "refused" in (row.error or "") and "non-public" in (row.error or "")
    assert receiver.requests == []
    _, row = deliver(receiver.url, clock, allow_private=False)  # the address itself
    assert row.state == FAILED and receiver.requests == []
    _, row = deliver(url, clock, allow_private=True)  # the same receiver, allowed: it works
    assert row.state == SUCCESS and len(receiver.requests) == 1


def test_redirects_are_not_followed(receiver: Receiver, clock: FixedClock) -> None:
    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", receiver.url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirector.serve_forever, args=(0.05,), daemon=True).start()
    try:
        _, row = deliver(f"http://127.0.0.1:{redirector.server_address[1]}/hook", clock, allow_private=True)
    finally:
        redirector.shutdown()
        redirector.server_close()
    assert row.status_code == 307 and row.state != SUCCESS
    assert receiver.requests == []


def test_a_saved_channel_is_refused_once_the_setting_is_off(tmp_path: Path, receiver: Receiver) -> None:
    """Through the whole server: a channel saved while private targets were allowed gets no
    delivery after a restart without the setting."""
    url = receiver.url.replace("127.0.0.1", "localhost")
    gen = build_api(tmp_path, alerts={"allow_private_webhook_targets": True})
    api = next(gen)
    ch = api.client.post(
        "/api/v1/notification/channels",
        json={"type": "WEBHOOK", "name": "x", "url": url, "signingSecret": receiver.secret},
        headers=api.headers(),
    )
    assert ch.status_code == 201, ch.text
    rule = {"type": "entitlements.balance.threshold", "name": "r", "channels": [ch.json()["id"]]}
    rule["thresholds"] = [{"type": "NUMBER", "value": 1}]
    rule_id = api.client.post("/api/v1/notification/rules", json=rule, headers=api.headers()).json()["id"]
    gen.close()

    gen = build_api(tmp_path)  # restarted with the default: public targets only
    api = next(gen)
    fired = api.client.post(f"/api/v1/notification/rules/{rule_id}/test", headers=api.headers()).json()
    deadline = time.monotonic() + 10
    while True:
        event = api.client.get(f"/api/v1/notification/events/{fired['id']}", headers=api.headers()).json()
        (status,) = event["deliveryStatus"]
        if status["state"] != "PENDING" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    gen.close()
    assert status["state"] == "FAILED" and "refused" in status["reason"]
    assert receiver.requests == []


def test_the_connection_goes_to_the_checked_address() -> None:
    """The name is resolved once; the TCP connection is made to that address, not to the name
    (which a rebinding DNS server could answer differently a second time)."""
    answers = iter([["8.8.8.8"], ["127.0.0.1"]])
    connected: list[str] = []

    class Recording(httpcore.NetworkBackend):
        def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
            connected.append(host)
            raise httpcore.ConnectError("not really connecting")

    backend = GuardedBackend(False, resolve=lambda host, port: next(answers), inner=Recording())
    with pytest.raises(httpcore.ConnectError):
        backend.connect_tcp("rebind.example", 443)
    assert connected == ["8.8.8.8"]
    with pytest.raises(TargetRefused):
        backend.connect_tcp("rebind.example", 443)  # the second answer is loopback
    assert connected == ["8.8.8.8"]


def test_every_resolved_address_must_be_public() -> None:
    with pytest.raises(TargetRefused):
        vetted("mixed.example", 443, False, lambda host, port: ["8.8.8.8", "10.0.0.1"])
    assert vetted("mixed.example", 443, True, lambda host, port: ["8.8.8.8", "10.0.0.1"]) == ["8.8.8.8", "10.0.0.1"]
    assert vetted("8.8.8.8", 443, False, lambda host, port: []) == ["8.8.8.8"]  # a literal needs no lookup
