"""Secrets are shown once: webhook signing secrets only when created or rotated, API keys and
portal tokens only when issued; no error answer and no log line echoes one back."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Api, build_api, make_key, start_server
from pythonjsonlogger.json import JsonFormatter
from standardwebhooks import Webhook
from test_dispatch import Receiver

from meterline.cli.logs import RedactingFilter
from meterline.cli.main import cli
from meterline.domain.notify.channels import masked_url
from meterline.domain.notify.signing import new_secret
from meterline.domain.redact import MASK, redact

SLACK = "https://hooks.slack.com/services/T0001/B0002/abcdefSECRETtoken"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from build_api(tmp_path)


def create(api: Api, **body: Any) -> dict[str, Any]:
    r = api.client.post("/api/v1/notification/channels", json=body, headers=api.headers())
    assert r.status_code == 201, r.text
    return dict(r.json())


def everything_a_reader_can_see(api: Api, key: str, channel_id: str) -> str:
    """Every channel, rule and event answer, as one text."""
    paths = [
        "/api/v1/notification/channels",
        "/api/v1/notification/channels?includeDeleted=true",
        f"/api/v1/notification/channels/{channel_id}",
        "/api/v1/notification/rules",
        "/api/v1/notification/events",
    ]
    answers = []
    for path in paths:
        r = api.client.get(path, headers=api.headers(key))
        assert r.status_code == 200, r.text
        answers.append(r.text)
    return "\n".join(answers)


def test_signing_secret_is_shown_at_creation_and_rotation_only(api: Api) -> None:
    chosen = new_secret()
    spec = {
        "type": "WEBHOOK",
        "name": "slack",
        "url": SLACK,
        "format": "slack",
        "customHeaders": {"Authorization": "Bearer receiver-token"},
    }
    ch = create(api, **spec, signingSecret=chosen)
    generated = create(api, type="WEBHOOK", name="ops", url="https://example.com/hook")
    assert ch["signingSecret"] == chosen and generated["signingSecret"].startswith("whsec_")

    # an update (even one that sets the secret) answers without it
    r = api.client.put(
        f"/api/v1/notification/channels/{ch['id']}",
        json={**spec, "signingSecret": chosen},
        headers=api.headers(),
    )
    assert r.status_code == 200 and "signingSecret" not in r.json()

    # rules and fired test events through the channel do not carry it either
    rule = {"type": "entitlements.balance.threshold", "name": "r", "channels": [ch["id"]]}
    rule["thresholds"] = [{"type": "NUMBER", "value": 1}]
    assert api.client.post("/api/v1/notification/rules", json=rule, headers=api.headers()).status_code == 201
    rule_id = api.client.get("/api/v1/notification/rules", headers=api.headers()).json()["items"][0]["id"]
    fired = api.client.post(f"/api/v1/notification/rules/{rule_id}/test", headers=api.headers())
    assert fired.status_code == 201, fired.text

    reader = make_key(api.data_dir, ["read"])
    for key in (api.key, reader):
        seen = everything_a_reader_can_see(api, key, ch["id"])
        assert chosen not in seen and generated["signingSecret"] not in seen
        assert "signingSecret" not in seen

    # a reader sees neither the Slack URL's token nor the receiver's header value
    seen = everything_a_reader_can_see(api, reader, ch["id"])
    assert "SECRET" not in seen and "receiver-token" not in seen
    got = api.client.get(f"/api/v1/notification/channels/{ch['id']}", headers=api.headers(reader)).json()
    assert (got["url"], got["customHeaders"]) == (f"https://hooks.slack.com/{MASK}", {"Authorization": MASK})
    # an admin sees where alerts go, in full
    got = api.client.get(f"/api/v1/notification/channels/{ch['id']}", headers=api.headers()).json()
    assert (got["url"], got["customHeaders"]) == (SLACK, {"Authorization": "Bearer receiver-token"})

    # rotation: admin only, shows the new secret once
    path = f"/api/v1/notification/channels/{ch['id']}/rotate-secret"
    assert api.client.post(path, headers=api.headers(reader)).status_code == 403
    r = api.client.post(path, headers=api.headers())
    assert r.status_code == 200, r.text
    rotated = r.json()["signingSecret"]
    assert rotated.startswith("whsec_") and rotated != chosen
    assert rotated not in everything_a_reader_can_see(api, api.key, ch["id"])
    again = new_secret()
    r = api.client.post(path, json={"signingSecret": again}, headers=api.headers())
    assert (r.status_code, r.json()["signingSecret"]) == (200, again)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"signingSecret": "whsec_AAAA"}, 400, "invalid_channel"),
        ({"signingSecret": 5}, 400, "invalid_rotation_request"),
        ([], 400, "invalid_rotation_request"),
    ],
)
def test_rotation_rejects_bad_input(api: Api, body: Any, status: int, code: str) -> None:
    ch = create(api, type="WEBHOOK", name="ops", url="https://example.com/hook")
    r = api.client.post(f"/api/v1/notification/channels/{ch['id']}/rotate-secret", json=body, headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (status, code)
    assert "whsec_AAAA" not in r.text


def test_rotation_of_a_log_channel_or_a_missing_channel(api: Api) -> None:
    log = create(api, type="LOG", name="log")
    r = api.client.post(f"/api/v1/notification/channels/{log['id']}/rotate-secret", headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "channel_has_no_secret")
    r = api.client.post("/api/v1/notification/channels/nope/rotate-secret", headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (404, "channel_not_found")
    r = api.client.post(f"/api/v1/notification/channels/{log['id']}/rotate-secret", content=b"{", headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "malformed_json")


def test_no_error_echoes_a_key_secret_or_token(api: Api) -> None:
    reader = make_key(api.data_dir, ["read"])
    token = api.client.post("/api/v1/portal/tokens", json={"subject": "acme"}, headers=api.headers()).json()["token"]
    whsec = new_secret()
    secret_part = reader.split("_", 2)[2]
    attempts = [
        ("DELETE", f"/api/v1/keys/{reader}"),  # the secret itself where its id belongs
        ("DELETE", f"/api/v1/keys/{api.key}"),
        ("GET", f"/api/v1/meters/{reader}"),
        ("GET", f"/api/v1/meters/{token}/query"),
        ("GET", f"/api/v1/customers/{whsec}"),
        ("GET", f"/api/v1/notification/channels/{token}"),
        ("GET", f"/api/v1/no-such-endpoint/{reader}"),
        ("PUT", f"/api/v1/meters/{reader}"),
    ]
    for method, path in attempts:
        r = api.client.request(method, path, headers=api.headers())
        assert r.status_code in (400, 404, 405), (path, r.status_code)
        for secret in (secret_part, token, whsec.removeprefix("whsec_")):
            assert secret not in r.text, (path, r.text)
    r = api.client.delete(f"/api/v1/keys/{reader}", headers=api.headers())
    assert r.json()["code"] == "key_not_found"
    # the public key id is kept, so the caller can tell which key was meant
    assert r.json()["instance"] == "/api/v1/keys/ml_" + reader.split("_")[1] + "_" + MASK
    # the portal query with the token in the path, authenticated by the token itself
    r = api.client.get(f"/api/v1/portal/meters/{token}/query", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (403, 404) and token not in r.text


def test_the_key_still_works_after_a_failed_revoke_by_secret(api: Api) -> None:
    reader = make_key(api.data_dir, ["read"])
    api.client.delete(f"/api/v1/keys/{reader}", headers=api.headers())
    assert api.client.get("/api/v1/meters", headers=api.headers(reader)).status_code == 200


def test_redact_masks_every_credential_kind() -> None:
    key = "ml_0123456789ab_" + "A" * 43
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhY21lIn0.c2lnbmF0dXJl"
    whsec = new_secret()
    text = f"no meter {key!r}, {token} and {whsec}; xml_0123_abcdefgh stays"
    out = redact(text)
    assert key not in out and token not in out and whsec not in out
    assert "ml_0123456789ab_[redacted]" in out and "xml_0123_abcdefgh stays" in out
    assert redact("plain text, nothing secret") == "plain text, nothing secret"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (SLACK, f"https://hooks.slack.com/{MASK}"),
        ("https://user:pw@example.com:8443/", "https://example.com:8443/"),
        ("http://example.com", "http://example.com"),
        ("https://example.com/?token=abc", f"https://example.com/{MASK}"),
        ("http://[2001:db8::1]:9/x", f"http://[2001:db8::1]:9/{MASK}"),
        (None, None),
    ],
)
def test_masked_url(url: str | None, masked: str | None) -> None:
    assert masked_url(url) == masked


def test_log_lines_never_carry_a_credential() -> None:
    key = "ml_0123456789ab_" + "B" * 43
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("meterline.test-redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("revoke %s failed", key, extra={"path": f"/api/v1/keys/{key}", "items": [key]})
        try:
            raise ValueError(f"bad key {key}")
        except ValueError:
            logger.exception("unhandled error")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2 and "B" * 10 not in stream.getvalue()
    assert lines[0]["message"] == f"revoke ml_0123456789ab_{MASK} failed"
    assert lines[0]["path"] == f"/api/v1/keys/ml_0123456789ab_{MASK}"
    assert "ValueError: bad key ml_0123456789ab_[redacted]" in lines[1]["exc_info"]


def test_cli_prints_a_secret_only_when_it_is_made(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    env = {"METERLINE_URL": server.url, "METERLINE_API_KEY": server.key}

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["alerts", "channels", *args], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    try:
        created = run("create", "--name", "ops", "--webhook", "https://example.com/hook")
        (secret,) = re.findall(r"whsec_\S+", created)
        channel_id = re.findall(r"\((\w+)\)", created)[0]
        assert secret not in run("list") and secret not in run("list", "--json")
        rotated = run("rotate-secret", channel_id)
        (new,) = re.findall(r"whsec_\S+", rotated)
        assert new != secret
        listed = run("list", "--json")
        assert new not in listed and secret not in listed and "signingSecret" not in listed
    finally:
        server.stop()


def test_deliveries_after_a_rotation_are_signed_with_the_new_secret(tmp_path: Path) -> None:
    receiver = Receiver()  # verifies with its own secret, the one the channel starts with
    gen = build_api(tmp_path, alerts={"allow_private_webhook_targets": True})
    api = next(gen)
    api.clock.advance(time.time() - api.clock.now_us() / 1e6)  # the signatures carry real timestamps
    try:
        ch = create(api, type="WEBHOOK", name="ops", url=receiver.url, signingSecret=receiver.secret)
        rule = {"type": "entitlements.balance.threshold", "name": "r", "channels": [ch["id"]]}
        rule["thresholds"] = [{"type": "NUMBER", "value": 1}]
        rule_id = api.client.post("/api/v1/notification/rules", json=rule, headers=api.headers()).json()["id"]
        test = f"/api/v1/notification/rules/{rule_id}/test"
        assert api.client.post(test, headers=api.headers()).status_code == 201
        wait_until(lambda: len(receiver.requests) == 1)
        rotated = api.client.post(f"/api/v1/notification/channels/{ch['id']}/rotate-secret", headers=api.headers())
        new = rotated.json()["signingSecret"]
        assert api.client.post(test, headers=api.headers()).status_code == 201
        wait_until(lambda: len(receiver.requests) == 2)
    finally:
        gen.close()
        receiver.close()
    before, after = receiver.requests
    assert before.verified and not after.verified  # the old secret no longer signs anything
    Webhook(new).verify(after.body, after.headers)


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
