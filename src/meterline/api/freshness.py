"""Freshness headers: every answer says how fresh its usage numbers are.

A pure ASGI middleware that opens a ``runtime.freshness`` record per HTTP request and, when
the answer starts, adds:

- on an ingest answer, ``Meterline-Ledger-Position``: the ledger position covering the
  request's events;
- on any answer that read usage (meter and portal queries, entitlement values, checks and
  history, invoice previews and billing runs), ``Meterline-As-Of-Position`` (every ledger entry
  up to it is reflected) and, when known, ``Meterline-As-Of`` (when that entry was received).

By default a usage read waits, at most ``aggregation.max_wait``, until the aggregator has
applied the ledger position current when the read started, so a caller reads its own writes.
``?consistency=eventual`` on the request skips the wait (the answer is whatever is aggregated,
and its headers say which position that is); ``consistency=strong`` is the default. A request
header ``Meterline-Min-Position: N`` (the ``Meterline-Ledger-Position`` of an earlier ingest)
makes the read reflect at least position N, waiting for it if need be, also with
``consistency=eventual``. Another ``consistency`` value or a position that is not a whole
number is a 400 problem (``invalid_consistency``, ``invalid_position``).

Scale mode's log has one position per partition: its ingest answers carry
``Meterline-Log-Positions: P:O,...`` instead, and a read that sends them back as
``Meterline-Min-Log-Positions`` (through any API node) reflects at least those offsets. Each
mode answers the other mode's request header with a 400 ``invalid_position`` naming its own.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterline.api.problems import problem_for
from meterline.domain.clock import from_us
from meterline.domain.errors import InvalidInput
from meterline.runtime import freshness

CONSISTENCY = ("strong", "eventual")
_MIN_POSITION = freshness.MIN_POSITION.encode()
_MIN_LOG_POSITIONS = freshness.MIN_LOG_POSITIONS.encode()
_TOKEN_LENGTHS = frozenset({len(_MIN_POSITION), len(_MIN_LOG_POSITIONS)})
_MAX_POSITION = 2**63 - 1


class FreshnessHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            position, log_positions = _tokens(scope)
            record = freshness.begin(
                wait=_wait(scope),
                min_position=None if position is None else _min_position(position),
                min_log_positions=None if log_positions is None else _min_log_positions(log_positions),
            )
        except InvalidInput as exc:
            await problem_for(Request(scope), exc)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += _headers(record)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _wait(scope: Scope) -> bool:
    raw = scope.get("query_string", b"")
    if not raw:  # most requests (every ingest): nothing to parse
        return True
    query = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    asked = [value for name, value in query if name == "consistency"]
    for value in asked:
        if value not in CONSISTENCY:
            raise InvalidInput(
                f"consistency must be one of {', '.join(CONSISTENCY)} (got {value[:40]!r})",
                code="invalid_consistency",
            )
    return "eventual" not in asked


def _tokens(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """The last value of each read-your-writes request header (``Meterline-Min-Position``,
    ``Meterline-Min-Log-Positions``), or None: one pass over the headers."""
    position = log_positions = None
    for name, value in scope.get("headers", ()):
        if len(name) in _TOKEN_LENGTHS:
            lowered = name.lower()
            if lowered == _MIN_POSITION:
                position = value
            elif lowered == _MIN_LOG_POSITIONS:
                log_positions = value
    return position, log_positions


def _min_position(value: bytes) -> int:
    text = value.decode("latin-1").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > _MAX_POSITION:
        raise InvalidInput(
            f"{freshness.MIN_POSITION} must be a ledger position (a whole number from 0), as"
            " Meterline-Ledger-Position answered it",
            code="invalid_position",
        )
    return int(text)


def _min_log_positions(value: bytes) -> dict[int, int]:
    positions = freshness.parse_log_positions(value.decode("latin-1"))
    if positions is None:
        raise InvalidInput(
            "Meterline-Min-Log-Positions must be partition:offset pairs separated by commas, as"
            " Meterline-Log-Positions answered them",
            code="invalid_position",
        )
    return positions


def _headers(record: freshness.Freshness) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    if record.ingested is not None:
        out.append((freshness.INGEST_POSITION.encode(), str(record.ingested).encode()))
    if record.log_positions:
        out.append((freshness.LOG_POSITIONS.encode(), freshness.format_log_positions(record.log_positions).encode()))
    if record.as_of_position is not None:
        out.append((freshness.AS_OF_POSITION.encode(), str(record.as_of_position).encode()))
        if record.as_of_us:
            stamp = from_us(record.as_of_us).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            out.append((freshness.AS_OF.encode(), stamp.encode()))
    return out
