"""``POST /api/v1/events`` at the HTTP level, against a real server: the raw ASGI endpoint reads
headers, bodies and connections the way any HTTP client may send them (chunked, pipelined,
100-continue, headers in any case or repeated, cut off half-way) and answers as the rest of the
API does."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from conftest import Server, build_api
from faults import BATCH, events, launch, metric, wait_until
from starlette.applications import Starlette
from test_ingest_api import assert_problem

from meterline.api.backpressure import Backpressure
from meterline.api.ingest import FastLane

LIMIT = 8192


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("edges")
    s = launch(tmp / "data", tmp / "server.log", {"METERLINE_SERVER__MAX_BODY_BYTES": str(LIMIT)})
    yield s
    s.stop()


def post(server: Server, body: object, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/events",
        content=body if isinstance(body, bytes) or not isinstance(body, list) else msgspec.json.encode(body),
        headers={"Authorization": f"Bearer {server.key}", "Content-Type": BATCH, **headers},
        timeout=60,
    )


def stored(server: Server, id_: str) -> int:
    r = httpx.get(f"{server.url}/api/v1/events", params={"id": id_}, headers={"Authorization": f"Bearer {server.key}"})
    return sum(1 for e in r.json() if e["event"]["id"] == id_)


def exchange(server: Server, raw: bytes, answers: int = 1) -> bytes:
    """Send raw bytes on one connection; read until ``answers`` responses have come."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(raw)
        got = b""
        while got.count(b"HTTP/1.1 ") < answers or not got.endswith((b"\r\n\r\n", b"}")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


def head(server: Server, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
        f"Content-Type: {BATCH}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def test_a_chunked_body_is_read_whole(server: Server) -> None:
    body = msgspec.json.encode(events("chunked", 20))
    parts = iter([body[:7], body[7:500], body[500:]])
    r = post(server, parts, Prefer="return=representation")  # an iterator: sent chunked
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 20
    assert stored(server, "chunked-19") == 1


def test_bodies_over_the_limit_declared_or_chunked(server: Server) -> None:
    big = msgspec.json.encode(events("big", 1, pad=LIMIT))
    assert_problem(post(server, big), 413, "body_too_large")
    r = post(server, iter([big[:4000], big[4000:]]))
    body = assert_problem(r, 413, "body_too_large")
    assert body["detail"] == f"The body is over {LIMIT} bytes"
    assert stored(server, "big-0") == 0


def test_header_spelling_and_repeats(server: Server) -> None:
    one = msgspec.json.encode(events("spelled", 1)[0])
    r = post(server, one, **{"Content-Type": "Application/CloudEvents+JSON ; charset=UTF-8"})
    assert r.status_code == 204, r.text
    assert stored(server, "spelled-0") == 1
    # a repeated header: the first value counts, as everywhere else in the API
    raw = head(server, msgspec.json.encode(events("twice", 1)), "Content-Type: text/plain\r\n")
    raw = raw.replace(f"Content-Type: {BATCH}\r\n".encode(), b"").replace(
        b"Content-Type: text/plain\r\n", f"Content-Type: text/plain\r\nContent-Type: {BATCH}\r\n".encode()
    )
    assert exchange(server, raw).startswith(b"HTTP/1.1 415 ")
    assert stored(server, "twice-0") == 0


def test_refusals_are_problems(server: Server) -> None:
    r = httpx.post(f"{server.url}/api/v1/events", content=b"[]", headers={"Content-Type": BATCH})
    assert_problem(r, 401, "missing_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    r = post(server, b"[]", Authorization="Bearer nope")
    assert_problem(r, 401, "invalid_api_key")
    assert (metric(server, "meterline_auth_failures_total") or 0) >= 2
    assert_problem(post(server, b"[]", **{"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    assert_problem(post(server, b"[1,"), 400, "malformed_json")
    bad = events("mixed", 2)
    bad[1]["specversion"] = "0.3"
    body = assert_problem(post(server, bad), 400, "events_rejected")
    assert body["instance"] == "/api/v1/events"
    assert body["accepted"] == 1 and [e["reason"] for e in body["rejected"]] == ["unsupported_specversion"]
    assert post(server, b"[]").status_code == 204
    r = httpx.put(f"{server.url}/api/v1/events", headers={"Authorization": f"Bearer {server.key}"})
    assert_problem(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, HEAD, POST"


def test_pipelined_requests_on_one_connection(server: Server) -> None:
    raw = b"".join(head(server, msgspec.json.encode(events(f"pipe{i}", 3))) for i in range(3))
    answer = exchange(server, raw, answers=3)
    assert answer.count(b"HTTP/1.1 204 ") == 3, answer
    assert all(stored(server, f"pipe{i}-2") == 1 for i in range(3))


def test_expect_100_continue(server: Server) -> None:
    body = msgspec.json.encode(events("continue", 2))
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(
            head(server, b"", "Expect: 100-continue\r\n").replace(
                b"Content-Length: 0", b"Content-Length: %d" % len(body)
            )
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 204 ")
    assert stored(server, "continue-1") == 1


def test_a_client_gone_half_way_leaves_nothing_and_no_harm(server: Server, tmp_path: Path) -> None:
    body = msgspec.json.encode(events("cut", 5))
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head(server, body)[: -len(body) // 2])
    wait_until(lambda: (metric(server, "meterline_requests_in_flight") or 0) == 0)
    assert stored(server, "cut-0") == 0
    assert post(server, events("after", 1)).status_code == 204
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200


def test_the_fast_lane_is_the_last_middleware(tmp_path: Path) -> None:
    """FastLane hands ingest requests straight to the endpoint, so a middleware listed after it
    would never see them: admission control, and anything that adds headers to answers, must
    come before it."""
    api = build_api(tmp_path)
    app = next(api).client.app
    try:
        assert isinstance(app, Starlette)
        kinds = [m.cls for m in app.user_middleware]
        assert kinds[-1] is FastLane and Backpressure in kinds
    finally:
        api.close()
