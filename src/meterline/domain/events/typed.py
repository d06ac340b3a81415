"""The whole request body in one typed decode, for the usual case of a body of valid events.

:func:`decode_body` gives exactly what ``decode_events(split_body(...))`` gives, the same
:class:`Candidate` for every event, rejections and messages included, only faster: a struct
that only a valid envelope fits (:class:`ValidEnvelope`) decodes the whole array in one call,
and what is left per event is the time window, the payload digest and two small objects.

Whenever that typed decode fails (an invalid envelope anywhere, a body that is not JSON, too
many events, leading whitespace, nesting beyond the parser) the body goes the field-by-field
way of :mod:`meterline.domain.events.decode`, which finds and names each problem. An event
that fits the struct but might still be rejected for something the struct cannot see (nesting
of ``data``, ``datacontenttype``) is decoded the field-by-field way on its own too.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

from meterline.domain.clock import to_us
from meterline.domain.events.decode import (
    MAX_FIELD_LENGTH,
    Limits,
    check_time,
    decode_events,
    decode_one,
    digest,
    split_body,
)
from meterline.domain.events.model import Candidate, Event
from meterline.domain.nesting import MAX_DEPTH

Field = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_FIELD_LENGTH)]


class ValidEnvelope(msgspec.Struct):
    """A CloudEvents 1.0 envelope that passes every field check of ``decode`` by its type alone
    (the time window and the nesting of ``data`` are checked after decoding)."""

    specversion: Literal["1.0"]
    id: Field
    source: Field
    type: Field
    subject: Field
    time: datetime | None = None
    data: dict[str, Any] | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None


_batch = msgspec.json.Decoder(list[ValidEnvelope], float_hook=Decimal)
_single = msgspec.json.Decoder(ValidEnvelope, float_hook=Decimal)
_raws = msgspec.json.Decoder(list[msgspec.Raw])
_raw = msgspec.json.Decoder(msgspec.Raw)
# An event with at most this many '{' and '[' (the envelope's own '{' included) cannot nest
# ``data`` deeper than MAX_DEPTH, whatever its strings hold.
_SHALLOW = MAX_DEPTH + 1


def decode_body(body: bytes, shape: str, namespace: str, now_us: int, limits: Limits) -> list[Candidate]:
    """Every event of a request body as a :class:`Candidate`. ``shape`` is ``single``, ``batch``
    or ``any``; problems with the body as a whole raise as in :func:`split_body`."""
    typed = _typed(body, shape, limits.max_events)
    if typed is None:
        return decode_events(split_body(body, shape, limits.max_events), namespace, now_us, limits)
    envelopes, raws = typed
    pairs = enumerate(zip(envelopes, raws, strict=True))
    return [_candidate(i, env, raw, namespace, now_us, limits) for i, (env, raw) in pairs]


def _typed(body: bytes, shape: str, max_events: int) -> tuple[list[ValidEnvelope], list[msgspec.Raw]] | None:
    """The envelopes and raw bytes of a body of valid events, or None to go field by field."""
    first = body[:1]
    try:
        if first == b"[" and shape != "single":
            envelopes = _batch.decode(body)
            return (envelopes, _raws.decode(body)) if len(envelopes) <= max_events else None
        if first == b"{" and shape != "batch":
            return [_single.decode(body)], [_raw.decode(body)]
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    return None


def _candidate(
    index: int, env: ValidEnvelope, sent: msgspec.Raw, namespace: str, now_us: int, limits: Limits
) -> Candidate:
    raw = bytes(sent)
    if env.datacontenttype is not None or raw.count(b"{") + raw.count(b"[") > _SHALLOW:
        return decode_one(index, sent, namespace, now_us, limits)
    time_us = now_us
    if env.time is not None:
        rejection = check_time(env.time, now_us, limits)
        if rejection is not None:
            return Candidate(index, env.id, env.source, rejection=rejection, raw=raw)
        time_us = to_us(env.time)
    fingerprint = digest(env.type, env.subject, None if env.time is None else time_us, env.data)
    event = Event(namespace, env.source, env.id, env.type, env.subject, time_us, env.data, raw, fingerprint)
    return Candidate(index, env.id, env.source, event=event, raw=raw)
