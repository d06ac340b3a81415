"""Notification channels: where alerts go.

- ``WEBHOOK``: an HTTP(S) endpoint; every delivery is a POST signed per Standard Webhooks
  (:mod:`meterline.domain.notify.signing`) with the channel's ``whsec_`` secret. ``format="slack"`` sends
  a Slack incoming-webhook message (:mod:`meterline.domain.notify.payloads`) instead of the alert JSON.
- ``LOG``: the alert is written to the ``meterline.alerts`` logger; nothing leaves the process.

The create shape follows OpenMeter's notification channel API (camelCase on the wire).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from meterline.domain.errors import InvalidInput
from meterline.domain.identifiers import name_problem
from meterline.domain.notify import signing
from meterline.domain.notify.urls import url_problems
from meterline.domain.redact import MASK

ChannelType = Literal["WEBHOOK", "LOG"]
ChannelFormat = Literal["standard", "slack"]

# Headers the dispatcher sets itself; a channel may not replace them.
RESERVED_HEADERS = frozenset(
    {
        signing.ID_HEADER,
        signing.TIMESTAMP_HEADER,
        signing.SIGNATURE_HEADER,
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_MIN_SECRET_BYTES, _MAX_SECRET_BYTES = 24, 64  # the range the Standard Webhooks spec recommends


class ChannelInput(msgspec.Struct, frozen=True, rename="camel"):
    type: ChannelType
    name: str
    url: str | None = None
    disabled: bool = False
    metadata: dict[str, str] | None = None
    custom_headers: dict[str, str] | None = None
    signing_secret: str | None = None
    format: ChannelFormat = "standard"


class Channel(msgspec.Struct, frozen=True):
    """A stored channel. A ``WEBHOOK`` channel always has a signing secret."""

    id: str
    namespace: str
    spec: ChannelInput
    created_us: int
    updated_us: int

    @property
    def type(self) -> ChannelType:
        return self.spec.type

    @property
    def disabled(self) -> bool:
        return self.spec.disabled


def channel_problems(inp: ChannelInput) -> list[str]:
    """Every problem with ``inp``, as messages for the caller; empty when it is valid."""
    problems: list[str] = []
    if problem := name_problem("name", inp.name):
        problems.append(problem)
    if inp.type not in ("WEBHOOK", "LOG"):
        problems.append("type must be WEBHOOK or LOG")
    if inp.format not in ("standard", "slack"):
        problems.append("format must be standard or slack")
    if inp.type == "WEBHOOK":
        problems += _url_problems(inp.url)
    elif inp.type == "LOG":
        problems += _log_problems(inp)
    if inp.signing_secret is not None:
        problems += _secret_problems(inp.signing_secret)
    problems += _header_problems(inp.custom_headers or {})
    return problems


def validate_channel(inp: ChannelInput) -> None:
    """Raise ``InvalidInput`` (code ``invalid_channel``, ``extra["problems"]``) listing every problem."""
    problems = channel_problems(inp)
    if problems:
        raise InvalidInput("invalid channel: " + "; ".join(problems), code="invalid_channel", problems=problems)


def new_channel(channel_id: str, namespace: str, inp: ChannelInput, now_us: int) -> Channel:
    """Validate ``inp`` and build the stored channel, generating a secret for a webhook that has none."""
    validate_channel(inp)
    spec = _with_secret(inp, None)
    return Channel(id=channel_id, namespace=namespace, spec=spec, created_us=now_us, updated_us=now_us)


def update_channel(channel: Channel, inp: ChannelInput, now_us: int) -> Channel:
    """Replace a channel's spec; a webhook update without a secret keeps the current one."""
    validate_channel(inp)
    spec = _with_secret(inp, channel.spec.signing_secret)
    return msgspec.structs.replace(channel, spec=spec, updated_us=now_us)


def rotate_secret(channel: Channel, secret: str | None, now_us: int) -> Channel:
    """A webhook channel with a new signing secret (``secret``, or a generated one). From then on
    every delivery, including retries of earlier alerts, is signed with the new secret only."""
    if channel.type != "WEBHOOK":
        raise InvalidInput("only a WEBHOOK channel has a signing secret", code="channel_has_no_secret")
    problems = [] if secret is None else _secret_problems(secret)
    if problems:
        raise InvalidInput("invalid signing secret: " + "; ".join(problems), code="invalid_channel", problems=problems)
    spec = msgspec.structs.replace(channel.spec, signing_secret=secret or signing.new_secret())
    return msgspec.structs.replace(channel, spec=spec, updated_us=now_us)


def masked_url(url: str | None) -> str | None:
    """``url`` as far as it is safe to show to a reader: scheme, host and port; user info, path
    and query (where receivers such as Slack keep their tokens) are masked."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    rest = "" if parts.path in ("", "/") and not parts.query and not parts.fragment else "/" + MASK
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{rest or parts.path}"


def _with_secret(inp: ChannelInput, current: str | None) -> ChannelInput:
    if inp.type != "WEBHOOK" or inp.signing_secret is not None:
        return inp
    return msgspec.structs.replace(inp, signing_secret=current or signing.new_secret())


def _url_problems(url: str | None) -> list[str]:
    return url_problems(url) if url else ["a WEBHOOK channel needs a url"]


def _log_problems(inp: ChannelInput) -> list[str]:
    problems = []
    if inp.url is not None:
        problems.append("a LOG channel must not have a url")
    if inp.format != "standard":
        problems.append("format applies to WEBHOOK channels only")
    return problems


def _secret_problems(secret: str) -> list[str]:
    message = f"signingSecret must be whsec_ followed by base64 of {_MIN_SECRET_BYTES}-{_MAX_SECRET_BYTES} bytes"
    if not secret.startswith(signing.SECRET_PREFIX):
        return [message]
    try:
        signing.sign(secret, "probe", 0, b"")  # signing's own parser decides what it accepts
        raw = secret.removeprefix(signing.SECRET_PREFIX)
        size = len(base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True))
    except (InvalidInput, binascii.Error, ValueError):
        return [message]
    return [] if _MIN_SECRET_BYTES <= size <= _MAX_SECRET_BYTES else [message]


MAX_CUSTOM_HEADERS = 32
MAX_HEADER_NAME = 256
MAX_HEADER_BYTES = 16 * 1024
"""Every delivery sends a channel's custom headers: their number and size are bounded."""


def _header_problems(headers: dict[str, str]) -> list[str]:
    if len(headers) > MAX_CUSTOM_HEADERS:
        return [f"at most {MAX_CUSTOM_HEADERS} custom headers are allowed, got {len(headers)}"]
    if sum(len(name) + len(value) for name, value in headers.items()) > MAX_HEADER_BYTES:
        return [f"custom headers must add up to at most {MAX_HEADER_BYTES} characters (names and values)"]
    problems = []
    for name, value in headers.items():
        shown = name[:64] + ("..." if len(name) > 64 else "")
        if len(name) > MAX_HEADER_NAME or not _HEADER_NAME.fullmatch(name):
            problems.append(f"custom header name {shown!r} is not a valid HTTP header name (at most {MAX_HEADER_NAME})")
        elif name.lower() in RESERVED_HEADERS:
            problems.append(f"custom header {shown!r} is set by meterline and cannot be overridden")
        if not _HEADER_VALUE.fullmatch(value):
            problems.append(f"custom header {shown!r} value must be printable ASCII on one line")
    return problems
