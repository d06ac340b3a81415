"""CloudEvents HTTP binary content mode: the attributes in ``ce-*`` headers, the data in the body.

:func:`structured` turns such a request into the structured-mode event it stands for (one JSON
object), so it is decoded, validated, deduplicated and reported exactly as a structured event:
the ledger keeps that object, and a dead letter shows it. Header values are percent-decoded as
the HTTP binding asks (a UTF-8 attribute value is sent percent-encoded). The ``Content-Type``
is the event's ``datacontenttype``; only JSON data can be metered, so any other type (or a body
that is not JSON) is the event's ``invalid_data`` rejection, not an error of the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote

import msgspec

PREFIX = "ce-"
_encode = msgspec.json.Encoder()
_check = msgspec.json.Decoder(msgspec.Raw)


def is_binary(content_type: str, headers: Mapping[str, str]) -> bool:
    """Binary mode: a ``ce-specversion`` header and a body that is not itself a CloudEvent."""
    return "ce-specversion" in headers and not content_type.startswith("application/cloudevents")


def structured(headers: Mapping[str, str], content_type: str, body: bytes) -> bytes:
    """The structured JSON event for a binary-mode request (``headers``: lower-case names)."""
    event: dict[str, object] = {}
    for name, value in headers.items():
        if name.startswith(PREFIX) and len(name) > len(PREFIX):
            event[name[len(PREFIX) :]] = unquote(value) if "%" in value else value
    if content_type:
        event["datacontenttype"] = content_type
    if body.strip():
        event["data"] = _data(content_type, body)
    return _encode.encode(event)


def _data(content_type: str, body: bytes) -> object:
    """The body as JSON data when it is JSON; otherwise its text, which decoding then rejects
    (``data`` must be a JSON object) while the dead letter keeps what was sent."""
    media = content_type.split(";")[0].strip().lower()
    if media in ("", "application/json", "text/json") or media.endswith("+json"):
        try:
            return _check.decode(body)
        except msgspec.DecodeError:
            pass
    return body.decode("utf-8", errors="replace")
