"""How fresh one request's usage answer is, carried beside the request (a context variable).

The HTTP face opens a :class:`Freshness` per request (``api.freshness``): whether usage reads
of this request wait for the aggregator (``consistency=eventual`` says no), and, filled in by
the layers below as the request runs, the ledger position its ingest reached and the position
(and ingest time) its usage answer reflects. The face turns those into response headers. Code
running outside a request sees None and behaves as for a default request.

The object is shared, not copied, with the worker threads a request runs blocking calls on
(their context is a copy that references the same object), so what they note is seen by the
request.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

INGEST_POSITION = "meterline-ledger-position"
"""Answer header of an ingest: the ledger position that covers every event of the request."""
AS_OF_POSITION = "meterline-as-of-position"
"""Answer header of a usage read: every ledger entry up to this position is reflected."""
AS_OF = "meterline-as-of"
"""Answer header of a usage read: the receipt time (RFC 3339, UTC) of that position's event."""
MIN_POSITION = "meterline-min-position"
"""Request header: usage reads of this request reflect at least this ledger position (the
``Meterline-Ledger-Position`` an earlier ingest answered), waiting for it if need be."""
LOG_POSITIONS = "meterline-log-positions"
"""Answer header of an ingest in scale mode: per log partition the request wrote to, the offset
after its last event there (``partition:offset`` pairs, comma-separated)."""
MIN_LOG_POSITIONS = "meterline-min-log-positions"
"""Request header in scale mode: usage reads of this request reflect at least these log
positions (the ``Meterline-Log-Positions`` of earlier ingests, through any API node), waiting
for the sink workers if need be."""


@dataclass(slots=True)
class Freshness:
    wait: bool = True
    """Usage reads wait (bounded) for the aggregator to reach the ledger position of the read."""
    min_position: int | None = None
    """Usage reads wait (bounded) until at least this position is reflected, even when ``wait``
    is False (a caller's read-your-writes token)."""
    min_log_positions: dict[int, int] | None = None
    """Scale mode's read-your-writes token: per partition, the offset to reflect."""
    ingested: int | None = None
    log_positions: dict[int, int] | None = None
    """Scale mode: per partition, the offset after this request's last event written there."""
    as_of_position: int | None = None
    as_of_us: int | None = None


_current: ContextVar[Freshness | None] = ContextVar("meterline_freshness", default=None)


def begin(
    wait: bool = True, min_position: int | None = None, min_log_positions: dict[int, int] | None = None
) -> Freshness:
    """Open the freshness record of the request running in this context."""
    record = Freshness(wait, min_position, min_log_positions)
    _current.set(record)
    return record


def current() -> Freshness | None:
    return _current.get()


def format_log_positions(positions: dict[int, int]) -> str:
    """``partition:offset`` pairs by partition, comma-separated (the header value)."""
    return ",".join(f"{p}:{o}" for p, o in sorted(positions.items()))


def parse_log_positions(text: str) -> dict[int, int] | None:
    """The positions of a ``Meterline-Log-Positions`` value (the highest offset per partition
    when one repeats), or None when it is not one."""
    out: dict[int, int] = {}
    pairs = text.split(",")
    if len(pairs) > 4096:
        return None
    for pair in pairs:
        p, sep, o = pair.strip().partition(":")
        if not sep or not (p.isascii() and p.isdigit() and o.isascii() and o.isdigit()) or len(p) > 9 or len(o) > 18:
            return None
        out[int(p)] = max(out.get(int(p), 0), int(o))
    return out
