"""Standard Webhooks (https://www.standardwebhooks.com) signing and verification.

A secret is ``whsec_`` + base64 of random bytes; the HMAC key is the decoded bytes. A message is
signed as ``base64(HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.".encode() + body))`` and sent
as ``webhook-signature: v1,<base64>``. The header may list several space-separated signatures (one
per secret while a secret is being rotated); a message verifies if any of them matches any secret.
The body is signed as raw bytes, so verify before parsing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence

from meterline.domain.errors import InvalidInput, WebhookVerificationError

SECRET_PREFIX = "whsec_"
ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
_TIMESTAMP = re.compile(r"[0-9]{1,15}")  # ASCII digits only (\d also takes other scripts' digits)


def new_secret() -> str:
    """A fresh secret: ``whsec_`` + base64 of 32 random bytes from :mod:`secrets`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise InvalidInput("a webhook secret is whsec_ followed by base64", code="invalid_webhook_secret")
    return key


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of ``body`` sent as message ``msg_id`` at ``timestamp`` (Unix seconds)."""
    return "v1," + base64.b64encode(_digest(_key(secret), msg_id, timestamp, body)).decode()


def headers(secret: str | Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for a message.

    Pass several secrets while rotating: the signature header then carries one signature per secret,
    so receivers holding either the old or the new secret accept the message.
    """
    keys = [secret] if isinstance(secret, str) else list(secret)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(sign(s, msg_id, timestamp, body) for s in keys),
    }


def _fail(message: str, reason: str) -> WebhookVerificationError:
    return WebhookVerificationError(message, reason=reason)


def verify(
    secret: str | Sequence[str], headers: Mapping[str, str], body: bytes, *, now: int, tolerance: int = 300
) -> None:
    """Check a received webhook; return ``None`` if it is authentic and fresh, raise otherwise.

    ``secret`` is your endpoint's ``whsec_...`` secret, or several while rotating. ``headers`` are the
    request headers (names are matched case-insensitively), ``body`` the raw body bytes exactly as
    received, ``now`` the current Unix time in seconds. The timestamp must lie within ``tolerance``
    seconds of ``now`` either way, which bounds replays; signatures are compared in constant time.

    Raises ``WebhookVerificationError`` (code ``webhook_signature_invalid``; ``extra["reason"]`` is one
    of ``missing_headers``, ``invalid_timestamp``, ``timestamp_too_old``, ``timestamp_too_new``,
    ``no_matching_signature``) and ``InvalidInput`` if a secret is malformed. Example receiver::

        import json, os, time
        from meterline.domain.errors import WebhookVerificationError
        from meterline.domain.notify.signing import verify

        async def receive(request):                    # Starlette; any framework works the same way
            body = await request.body()                # the raw bytes: do not parse and re-serialise
            try:
                verify(os.environ["WEBHOOK_SECRET"], request.headers, body, now=int(time.time()))
            except WebhookVerificationError:
                return Response(status_code=401)
            event = json.loads(body)
            ...
    """
    keys = [_key(s) for s in ([secret] if isinstance(secret, str) else secret)]
    if not keys:
        raise InvalidInput("verify needs at least one webhook secret", code="invalid_webhook_secret")
    found = {name.lower(): value.strip() for name, value in headers.items()}
    msg_id, stamp, signatures = (found.get(h, "") for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    missing = [h for h, v in ((ID_HEADER, msg_id), (TIMESTAMP_HEADER, stamp), (SIGNATURE_HEADER, signatures)) if not v]
    if missing:
        raise _fail(f"missing webhook header(s): {', '.join(missing)}", "missing_headers")
    if not _TIMESTAMP.fullmatch(stamp):
        raise _fail(f"{TIMESTAMP_HEADER} must be whole seconds since the Unix epoch", "invalid_timestamp")
    timestamp = int(stamp)
    if timestamp < now - tolerance:
        raise _fail(f"webhook timestamp is more than {tolerance}s old", "timestamp_too_old")
    if timestamp > now + tolerance:
        raise _fail(f"webhook timestamp is more than {tolerance}s in the future", "timestamp_too_new")
    expected = [_digest(key, msg_id, timestamp, body) for key in keys]
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        if version == "v1" and any(hmac.compare_digest(e, _b64(value)) for e in expected):
            return
    raise _fail("no webhook signature matches the secret", "no_matching_signature")


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""
