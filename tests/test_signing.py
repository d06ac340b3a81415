"""Standard Webhooks signing, cross-checked both ways against the reference ``standardwebhooks`` library."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as TheirError

from meterline.domain.errors import InvalidInput, MeterlineError, WebhookVerificationError
from meterline.domain.notify.signing import headers, new_secret, sign, verify

# The test vector published with the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID, SPEC_TS, SPEC_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
SPEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
BODY = b'{"type":"entitlements.balance.threshold","data":{"subject":"customer-1","usage":"12.5"}}'


def theirs(secret: str, msg_id: str, ts: int, body: bytes) -> dict[str, str]:
    """Headers as the reference library signs them (it takes a datetime and a str body)."""
    sig = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def reason(exc: pytest.ExceptionInfo[WebhookVerificationError]) -> str:
    return str(exc.value.extra["reason"])


def test_spec_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIG
    verify(SPEC_SECRET, theirs(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_BODY, now=SPEC_TS)


def test_new_secret_shape() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and secret != new_secret()
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32


def test_ours_verifies_with_theirs() -> None:
    secret, now = new_secret(), int(time.time())  # the reference library checks against the real clock
    sent = headers(secret, "msg_01", now, BODY)
    assert sent["webhook-signature"] == sign(secret, "msg_01", now, BODY)
    assert Webhook(secret).verify(BODY, sent) == json.loads(BODY)
    with pytest.raises(TheirError):
        Webhook(secret).verify(BODY + b" ", sent)


def test_theirs_verifies_with_ours() -> None:
    secret, now = new_secret(), int(time.time())
    verify(secret, theirs(secret, "msg_02", now, BODY), BODY, now=now)


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "secret", "signature"])
def test_tampering_fails(tamper: str) -> None:
    secret, now = new_secret(), 1_772_366_400
    sent = headers(secret, "msg_03", now, BODY)
    body, key = BODY, secret
    if tamper == "body":
        body = BODY.replace(b"12.5", b"125")
    elif tamper == "id":
        sent["webhook-id"] = "msg_04"
    elif tamper == "timestamp":
        sent["webhook-timestamp"] = str(now + 1)
    elif tamper == "secret":
        key = new_secret()
    else:
        sig = bytearray(base64.b64decode(sent["webhook-signature"][3:]))
        sig[0] ^= 1
        sent["webhook-signature"] = "v1," + base64.b64encode(bytes(sig)).decode()
    with pytest.raises(WebhookVerificationError, match="no webhook signature matches") as exc:
        verify(key, sent, body, now=now)
    assert reason(exc) == "no_matching_signature"
    assert exc.value.code == "webhook_signature_invalid" and exc.value.status == 401
    assert isinstance(exc.value, MeterlineError)


def test_rotation_two_secrets() -> None:
    old, new, now = new_secret(), new_secret(), 1_772_366_400
    both = headers([old, new], "msg_05", now, BODY)
    assert len(both["webhook-signature"].split()) == 2
    verify(old, both, BODY, now=now)
    verify(new, both, BODY, now=now)
    verify([old, new], headers(old, "msg_05", now, BODY), BODY, now=now)  # receiver holds both
    verify([old, new], headers(new, "msg_05", now, BODY), BODY, now=now)
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), both, BODY, now=now)


def test_rotation_interop_with_reference() -> None:
    old, new, now = new_secret(), new_secret(), int(time.time())
    Webhook(new).verify(BODY, headers([old, new], "msg_06", now, BODY))
    mixed = theirs(old, "msg_06", now, BODY)
    mixed["webhook-signature"] = "v2,ignored " + mixed["webhook-signature"]
    verify(old, mixed, BODY, now=now)


@pytest.mark.parametrize(("offset", "expected"), [(-301, "timestamp_too_old"), (301, "timestamp_too_new")])
def test_timestamp_outside_tolerance(offset: int, expected: str) -> None:
    secret, now = new_secret(), 1_772_366_400
    verify(secret, headers(secret, "m", now + offset, BODY), BODY, now=now, tolerance=301)
    with pytest.raises(WebhookVerificationError) as exc:
        verify(secret, headers(secret, "m", now + offset, BODY), BODY, now=now)
    assert reason(exc) == expected


def test_stale_message_fails_in_the_reference_too() -> None:
    secret = new_secret()
    stale = int(time.time()) - 3600
    with pytest.raises(TheirError, match="too old"):
        Webhook(secret).verify(BODY, headers(secret, "m", stale, BODY))


def test_header_names_are_case_insensitive() -> None:
    secret, now = new_secret(), 1_772_366_400
    sent = {k.title(): v for k, v in headers(secret, "m", now, BODY).items()}
    assert "Webhook-Signature" in sent
    verify(secret, sent, BODY, now=now)


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(drop: str) -> None:
    secret, now = new_secret(), 1_772_366_400
    sent = headers(secret, "m", now, BODY)
    sent[drop] = " "
    with pytest.raises(WebhookVerificationError, match=f"missing webhook header\\(s\\): {drop}") as exc:
        verify(secret, sent, BODY, now=now)
    assert reason(exc) == "missing_headers"
    del sent[drop]
    with pytest.raises(WebhookVerificationError, match=drop):
        verify(secret, sent, BODY, now=now)


@pytest.mark.parametrize("stamp", ["1772366400.5", "-1", "soon", "1e9"])
def test_malformed_timestamp(stamp: str) -> None:
    secret, now = new_secret(), 1_772_366_400
    sent = headers(secret, "m", now, BODY) | {"webhook-timestamp": stamp}
    with pytest.raises(WebhookVerificationError) as exc:
        verify(secret, sent, BODY, now=now)
    assert reason(exc) == "invalid_timestamp"


@pytest.mark.parametrize("signature", ["garbage", "v1,", "v1,!!!not-base64", "v1", ",,,", "v1a,abc="])
def test_malformed_signatures_fail_cleanly(signature: str) -> None:
    secret, now = new_secret(), 1_772_366_400
    sent = headers(secret, "m", now, BODY) | {"webhook-signature": signature}
    with pytest.raises(WebhookVerificationError):
        verify(secret, sent, BODY, now=now)


def test_binary_body() -> None:
    secret, now, body = new_secret(), 1_772_366_400, bytes(range(256))
    verify(secret, headers(secret, "m", now, body), body, now=now)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_***", ""])
def test_bad_secret(secret: str) -> None:
    with pytest.raises(InvalidInput, match="whsec_") as exc:
        sign(secret, "m", 1, BODY)
    assert exc.value.code == "invalid_webhook_secret"
    with pytest.raises(InvalidInput, match="at least one"):
        verify([], headers(new_secret(), "m", 1, BODY), BODY, now=1)


def test_unprefixed_secret_is_accepted_like_the_reference() -> None:
    secret = new_secret()
    assert sign(secret.removeprefix("whsec_"), "m", 1, BODY) == sign(secret, "m", 1, BODY)
