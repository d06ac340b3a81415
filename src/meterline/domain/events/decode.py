"""Turn a request body into validated events, one :class:`Candidate` per event.

Validation returns problems as data: a batch with bad events still yields every good one, and
each bad one carries a stable :class:`Reason`. Only problems with the body as a whole (not
JSON at all, wrong top-level shape, too many events) raise :class:`InvalidInput` /
:class:`PayloadTooLarge`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from meterline.domain.clock import to_us
from meterline.domain.errors import InvalidInput, PayloadTooLarge
from meterline.domain.events.model import Candidate, Event, Reason, Rejection
from meterline.domain.nesting import MAX_DEPTH, nests_deeper, split_array, too_deep

MAX_FIELD_LENGTH = 512
_TOO_DEEP = f"the event nests arrays and objects deeper than `data` may ({MAX_DEPTH} levels)"


class CloudEventIn(msgspec.Struct):
    """The CloudEvents 1.0 JSON envelope as it arrives. Every field is checked by hand after
    decoding so a missing one gets its own reason; extension attributes are ignored here and
    kept in ``raw``."""

    specversion: str | None = None
    id: str | None = None
    source: str | None = None
    type: str | None = None
    subject: str | None = None
    time: datetime | None = None
    data: Any = None
    datacontenttype: str | None = None
    dataschema: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_events: int
    future_skew_us: int
    late_window_us: int | None


_whole = msgspec.json.Decoder(msgspec.Raw)
_items = msgspec.json.Decoder(list[msgspec.Raw])
_envelope = msgspec.json.Decoder(CloudEventIn, float_hook=Decimal)
_loose = msgspec.json.Decoder()
_digest_encoder = msgspec.json.Encoder(order="sorted")
_REQUIRED = ("id", "source", "type", "subject")


class TooDeep(bytes):
    """The raw bytes of an event that nests too deeply to be parsed (rejected unread)."""


def split_body(body: bytes, shape: str, max_events: int) -> list[msgspec.Raw | TooDeep]:
    """Split a body into the raw bytes of each event. ``shape`` is ``single``, ``batch`` or ``any``."""
    try:
        whole = _whole.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}", code="malformed_json") from None
    except RecursionError:
        return _split_deep(body, shape, max_events)
    first = bytes(memoryview(whole)[:1])
    _check_shape(first, shape)
    if first == b"[":
        return _counted(_items.decode(whole), max_events)
    return [whole]


def _check_shape(first: bytes, shape: str) -> None:
    if first == b"[" and shape == "single":
        raise InvalidInput("application/cloudevents+json takes one event object, not an array", code="malformed_json")
    if first != b"[" and shape == "batch":
        raise InvalidInput("application/cloudevents-batch+json takes a JSON array of events", code="malformed_json")
    if first not in (b"[", b"{"):
        raise InvalidInput("The body must be a CloudEvent object or an array of them", code="malformed_json")


def _counted(items: list[Any], max_events: int) -> list[Any]:
    if len(items) > max_events:
        raise PayloadTooLarge(
            f"{len(items)} events in one request; at most {max_events} are allowed", code="too_many_events"
        )
    return items


def _split_deep(body: bytes, shape: str, max_events: int) -> list[msgspec.Raw | TooDeep]:
    """A body nested beyond the parser's own limit: cut the batch into events without
    recursion, so every event that is not itself too deep is still read."""
    first = body.lstrip()[:1]
    _check_shape(first, shape)
    raws = [body.strip()] if first == b"{" else split_array(body)
    if raws is None:
        raise InvalidInput("The body is not valid JSON (unbalanced brackets)", code="malformed_json")
    _counted(raws, max_events)
    return [TooDeep(raw) if too_deep(raw, MAX_DEPTH + 1) else msgspec.Raw(raw) for raw in raws]


def decode_events(
    raws: Sequence[msgspec.Raw | TooDeep], namespace: str, now_us: int, limits: Limits
) -> list[Candidate]:
    return [decode_one(i, raw, namespace, now_us, limits) for i, raw in enumerate(raws)]


def decode_one(index: int, sent: msgspec.Raw | TooDeep, namespace: str, now_us: int, limits: Limits) -> Candidate:
    """One event of a request, decoded on its own and checked field by field."""
    raw = bytes(sent)
    if isinstance(sent, TooDeep):
        return _reject(index, None, None, raw, Reason.INVALID_DATA, _TOO_DEEP)
    try:
        env = _envelope.decode(raw)
    except msgspec.ValidationError as exc:
        id_, source = _identity(raw)
        return _reject(index, id_, source, raw, _reason_for(str(exc)), str(exc))
    except msgspec.DecodeError as exc:
        return _reject(index, None, None, raw, Reason.MALFORMED, f"Not a JSON object: {exc}")
    except RecursionError:
        return _reject(index, None, None, raw, Reason.INVALID_DATA, _TOO_DEEP)
    problem = _check_envelope(env, now_us, limits)
    if problem is not None:
        return Candidate(index, env.id, env.source, rejection=problem, raw=raw)
    assert env.id and env.source and env.type and env.subject
    time_us = to_us(env.time) if env.time is not None else now_us
    event = Event(
        namespace,
        env.source,
        env.id,
        env.type,
        env.subject,
        time_us,
        env.data,
        raw,
        digest(env.type, env.subject, None if env.time is None else time_us, env.data),
    )
    return Candidate(index, env.id, env.source, event=event, raw=raw)


def _identity(raw: bytes) -> tuple[str | None, str | None]:
    """Best-effort id and source of an event that failed typed decoding, for the dead letter."""
    try:
        loose = _loose.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None, None
    if not isinstance(loose, dict):
        return None, None
    id_, source = loose.get("id"), loose.get("source")
    return (id_ if isinstance(id_, str) else None), (source if isinstance(source, str) else None)


def _reason_for(message: str) -> Reason:
    """msgspec names the failing path (``- at `$.id```); no path means the event itself is wrong."""
    if "`$.time`" in message:
        return Reason.INVALID_TIME
    if "- at `$." in message:
        return Reason.INVALID_FIELD
    return Reason.MALFORMED


def _check_envelope(env: CloudEventIn, now_us: int, limits: Limits) -> Rejection | None:
    for name in _REQUIRED:
        value = getattr(env, name)
        if value is None or value == "":
            return Rejection(Reason.MISSING_FIELD, f"`{name}` is required and must be a non-empty string")
        if len(value) > MAX_FIELD_LENGTH:
            return Rejection(Reason.INVALID_FIELD, f"`{name}` is longer than {MAX_FIELD_LENGTH} characters")
    if env.specversion is None:
        return Rejection(Reason.MISSING_FIELD, '`specversion` is required ("1.0")')
    if env.specversion != "1.0":
        return Rejection(
            Reason.UNSUPPORTED_SPECVERSION, f'specversion {env.specversion[:20]!r} is not supported; use "1.0"'
        )
    if env.data is not None and not isinstance(env.data, dict):
        return Rejection(Reason.INVALID_DATA, "`data` must be a JSON object")
    if env.data and nests_deeper(env.data, MAX_DEPTH):
        return Rejection(Reason.INVALID_DATA, _TOO_DEEP)
    if env.datacontenttype not in (None, "application/json") and not str(env.datacontenttype).startswith(
        "application/json;"
    ):
        return Rejection(Reason.INVALID_DATA, "`datacontenttype` must be application/json")
    if env.time is not None:
        return check_time(env.time, now_us, limits)
    return None


def check_time(t: datetime, now_us: int, limits: Limits) -> Rejection | None:
    if t.tzinfo is None:
        return Rejection(Reason.INVALID_TIME, "`time` must be RFC 3339 with a UTC offset (e.g. 2026-01-01T00:00:00Z)")
    time_us = to_us(t)
    if time_us > now_us + limits.future_skew_us:
        return Rejection(Reason.TIME_IN_FUTURE, "`time` is further in the future than the allowed clock skew")
    if limits.late_window_us is not None and time_us < now_us - limits.late_window_us:
        return Rejection(Reason.TIME_TOO_OLD, "`time` is older than the late-arrival window")
    return None


def digest(type_: str, subject: str, time_us: int | None, data: object) -> bytes:
    """Fingerprint of the payload. An event without ``time`` is fingerprinted without it, so an
    identical retry is not mistaken for a conflict just because it arrived later."""
    payload = _digest_encoder.encode([type_, subject, time_us, data])
    return hashlib.blake2b(payload, digest_size=16).digest()


def _reject(index: int, id_: str | None, source: str | None, raw: bytes, reason: Reason, message: str) -> Candidate:
    return Candidate(index, id_, source, rejection=Rejection(reason, message), raw=raw)
