"""The size of an accepted event, as the built-in ``ingested_bytes`` meter counts it.

An event's size is the length in bytes of its *canonical JSON*: the CloudEvent object as the
ledger holds it, re-encoded the same way whatever the transport carried it in (one JSON
object, an element of a batch array, or CloudEvents binary mode, whose ``ce-*`` headers and
body the ingest API turns into that object):

- members sorted by name, no insignificant whitespace, strings as UTF-8 with only the escapes
  JSON requires, numbers as written (``1.50`` stays ``1.50``);
- ``time`` as the event's time in the ledger, in UTC (``2026-01-01T00:00:00Z``, with
  microseconds when there are any), present even when the producer left it out;
- ``datacontenttype`` left out: data is always JSON here, and binary mode always carries the
  attribute (from ``Content-Type``) where a structured event usually does not.

So a resent event, a batch element and a single send of the same event measure the same; the
extension attributes, the identifiers and ``data`` all count. Pure: a function of the stored
event, so a rebuild of the rollups from the ledger reproduces every figure.

An event an erasure rewrote (embedded mode, ``domain.erasure.erased_raw``) keeps the size it
was received with in the attribute :data:`RECEIVED_SIZE` of its erased form (source ``""``,
which no sent event can have): it counts that size, so an erasure changes no figure.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import msgspec

_decode = msgspec.json.Decoder(float_hook=Decimal)
_encode = msgspec.json.Encoder(order="sorted", decimal_format="number")
_EPOCH = datetime(1970, 1, 1)
RECEIVED_SIZE = "receivedsize"
"""The attribute of an erased event holding the size it was received with."""
SKIPPED = ("datacontenttype",)
"""Members of the stored object that do not count."""


def canonical(raw: bytes, time_us: int) -> bytes:
    """The canonical JSON of a stored raw CloudEvent whose ledger time is ``time_us``."""
    return _canonical(_decode.decode(raw), time_us)


def _canonical(event: dict[str, Any], time_us: int) -> bytes:
    for name in SKIPPED:
        event.pop(name, None)
    event["time"] = time_text(time_us)
    return _encode.encode(event)


def time_text(time_us: int) -> str:
    """RFC 3339 in UTC: ``2026-03-01T10:00:00Z``, or with six digits of fraction when the
    time has microseconds (``...:00.120000Z``); the same text as an encoded ``datetime``."""
    second, micro = divmod(time_us, 1_000_000)
    return f"{_second(second)}Z" if micro == 0 else f"{_second(second)}.{micro:06d}Z"


@lru_cache(maxsize=4096)
def _second(second: int) -> str:
    """The date and time of a second (cached: a request's events mostly share a few)."""
    return (_EPOCH + timedelta(seconds=second)).isoformat()


def event_size(raw: bytes, time_us: int) -> int:
    """The number of bytes an accepted event counts for (see the module doc)."""
    event: dict[str, Any] = _decode.decode(raw)
    kept = event.get(RECEIVED_SIZE)
    if event.get("source") == "" and isinstance(kept, int) and not isinstance(kept, bool):
        return kept  # an erased event: the size it was received with
    return len(_canonical(event, time_us))
