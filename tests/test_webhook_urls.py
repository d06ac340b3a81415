"""A webhook URL is checked when a channel is saved: one both URL parsers read alike, with a
real host, port and scheme and no credentials, or a 400 ``invalid_channel`` naming the fault."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Api, build_api

CHANNELS = "/api/v1/notification/channels"

REFUSED = {
    "http://example.com:99999/": "valid host and port",
    "http://example.com:0/": "port",
    "http://example.com:+80/": "valid host and port",
    "http://example.com:\u0663/": "valid host and port",  # an Arabic-Indic digit: port 3 to httpx
    "http://exa mple.com/": "whitespace",
    "http://example.com/a b": "whitespace",
    "http://example.com/\u202ex": "control characters",
    "http://example.com\\@evil.example/": "backslashes",
    "example.com/hook": "absolute http",
    "//example.com/hook": "absolute http",
    "ftp://example.com/": "absolute http",
    "file:///etc/passwd": "absolute http",
    "http:///hook": "absolute http",
    "http://user:secret@example.com/": "user info",
    "http://user@example.com/": "user info",
    "http://@example.com/": "user info",
    "https://exa%20mple.com/": "DNS name",
    "http://ex_ample.com/": "DNS name",
    "http://-bad-.example/": "DNS name",
    "http://a..b/": "DNS name",
    "http://" + "a" * 64 + ".example/": "DNS name",
    "http://[::1": "valid host and port",
    "http://[fe80::1%25eth0]/": "IPv6",
    "https://example.com/" + "a" * 2100: "longer than 2048",
}

ACCEPTED = [
    "https://example.com/hook",
    "HTTPS://EXAMPLE.COM:8443/hook?token=a%20b#frag",
    "http://example.com.:80/",
    "https://b\u00fccher.example/hook",  # an international name, sent in its IDNA form
    "https://hooks.slack.com/services/T000/B000/XXXX",
    "http://[2606:4700:4700::1111]:8080/",
    "http://8.8.8.8/",
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from build_api(tmp_path_factory.mktemp("urls"))


@pytest.mark.parametrize("url", list(REFUSED))
def test_an_invalid_webhook_url_is_refused_on_create_and_update(api: Api, url: str) -> None:
    body = {"type": "WEBHOOK", "name": "hook", "url": url}
    r = api.client.post(CHANNELS, json=body, headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "invalid_channel"), r.text
    assert REFUSED[url] in r.json()["detail"]
    assert len(r.json()["detail"]) < 500  # a 2 KB URL is not echoed back
    ok = api.client.post(CHANNELS, json=body | {"url": "https://example.com/h"}, headers=api.headers())
    assert ok.status_code == 201, ok.text
    r = api.client.put(f"{CHANNELS}/{ok.json()['id']}", json=body, headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "invalid_channel"), r.text
    assert api.client.get(f"{CHANNELS}/{ok.json()['id']}", headers=api.headers()).json()["url"] == (
        "https://example.com/h"
    )


@pytest.mark.parametrize("url", ACCEPTED)
def test_a_valid_webhook_url_is_saved_as_given(api: Api, url: str) -> None:
    r = api.client.post(CHANNELS, json={"type": "WEBHOOK", "name": "hook", "url": url}, headers=api.headers())
    assert r.status_code == 201, r.text
    assert r.json()["url"] == url


def test_a_well_formed_private_target_is_still_refused_as_such(api: Api) -> None:
    body = {"type": "WEBHOOK", "name": "x", "url": "http://127.0.0.1/"}
    r = api.client.post(CHANNELS, json=body, headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "webhook_target_not_allowed")


HEADERS_REFUSED = {
    "count": ({f"X-H{i}": "v" for i in range(33)}, "at most 32 custom headers"),
    "size": ({f"X-H{i}": "v" * 1000 for i in range(17)}, "at most 16384 characters"),
    "long name": ({"X-" + "n" * 300: "v"}, "not a valid HTTP header name"),
}


@pytest.mark.parametrize("case", list(HEADERS_REFUSED))
def test_custom_headers_are_bounded_in_number_and_size(api: Api, case: str) -> None:
    headers, reason = HEADERS_REFUSED[case]
    body = {"type": "WEBHOOK", "name": "hook", "url": "https://example.com/h", "customHeaders": headers}
    r = api.client.post(CHANNELS, json=body, headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "invalid_channel"), r.text
    assert reason in r.json()["detail"]
    assert len(r.json()["detail"]) < 500  # a long header name is not echoed back whole
    fits = {f"X-H{i}": "v" * 500 for i in range(32)}
    ok = api.client.post(CHANNELS, json=body | {"customHeaders": fits}, headers=api.headers())
    assert ok.status_code == 201, ok.text
    assert ok.json()["customHeaders"] == fits
