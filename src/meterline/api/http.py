"""Small request/response helpers shared by the endpoint modules."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from meterline.api.members import member_problem
from meterline.domain.clock import rfc3339, to_us
from meterline.domain.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from meterline.domain.nesting import MAX_DEPTH, too_deep

_encode = msgspec.json.Encoder(decimal_format="number").encode
_decode_any = msgspec.json.Decoder(float_hook=Decimal)  # numbers stay exact


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    _check_declared(request.headers.get("content-length"), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The body is over {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """:func:`read_body` for a raw ASGI endpoint: the same limits, read from ``receive``."""
    _check_declared(declared, limit)
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The body is over {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _check_declared(declared: str | None, limit: int) -> None:
    """A declared ``Content-Length`` over ``limit`` is refused before any of the body is read."""
    if declared is not None and _DIGITS.fullmatch(declared) and int(declared) > limit:
        raise PayloadTooLarge(f"The body is {declared} bytes; at most {limit} are allowed", code="body_too_large")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def json_body(request: Request, limit: int = 1024 * 1024) -> Any:
    """The JSON body as builtins (numbers with a fraction or exponent as exact Decimals), for
    handlers that adjust it before converting it; they check it with ``members.tree_problem``."""
    body = await _json_bytes(request, limit)
    try:
        return _decode_any.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}", code="malformed_json") from None


async def _json_bytes(request: Request, limit: int) -> bytes:
    """The body of a JSON request, checked for its media type, size and nesting depth."""
    if media_type(request) not in ("application/json", ""):
        raise UnsupportedMediaType("Send application/json", code="unsupported_media_type")
    body = await read_body(request, limit)
    if too_deep(body):
        raise InvalidInput(
            f"The body nests arrays and objects more than {MAX_DEPTH} levels deep", code="too_deeply_nested"
        )
    return body


# Raw text from a request becomes a number only through these ASCII grammars: ``str.isdigit``
# and ``int`` also accept "²", "٣", "1_000" and " 7 ".
_DIGITS = re.compile(r"[0-9]{1,19}", re.ASCII)
_INTEGER = re.compile(r"-?[0-9]{1,19}", re.ASCII)
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})?",
    re.ASCII,
)


def parse_time(name: str, value: str | None) -> int | None:
    """An RFC 3339 query parameter as epoch microseconds (years 0001-9999 in UTC; an empty value
    is not a time)."""
    if value is None:
        return None
    text = value.replace(" ", "+")  # an unescaped '+' of the offset arrives as a space
    text = text[:10] + "T" + text[11:] if len(text) > 10 else text
    try:
        if not _RFC3339.fullmatch(text):
            raise ValueError
        t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if t.tzinfo is None:
            raise InvalidInput(f"`{name}` must carry a UTC offset, e.g. 2026-01-01T00:00:00Z", code="invalid_time")
        return to_us(t.astimezone(UTC))  # raises OverflowError outside years 1-9999 in UTC
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"`{name}` must be an RFC 3339 time, e.g. 2026-01-01T00:00:00Z", code="invalid_time"
        ) from None


def parse_int(name: str, value: str | None, default: int, low: int, high: int) -> int:
    """An integer query or path parameter in ``[low, high]`` (ASCII digits only)."""
    if value is None:
        return default
    if not _INTEGER.fullmatch(value):
        raise InvalidInput(f"`{name}` must be an integer", code="invalid_parameter")
    n = int(value)
    if not low <= n <= high:
        raise InvalidInput(f"`{name}` must be between {low} and {high}", code="invalid_parameter")
    return n


def parse_bool(name: str, value: str | None, default: bool = False) -> bool:
    """A boolean query parameter: ``true`` or ``false`` (any case), ``1`` or ``0``."""
    if value is None:
        return default
    text = value.lower()
    if text not in ("true", "false", "1", "0"):
        raise InvalidInput(f"`{name}` must be true or false", code="invalid_parameter")
    return text in ("true", "1")


T = TypeVar("T")


async def typed_body(request: Request, kind: type[T], what: str, limit: int = 1024 * 1024) -> T:
    """Decode the JSON body straight into ``kind`` (numbers stay exact for Decimal fields).

    Every member is checked against its type; Decimal members take only the JSON number
    grammar (in strings too), int members only 64-bit integers and times only years 1970-8999
    (``meterline.api.members``).
    """
    return _decode_typed(await _json_bytes(request, limit), kind, what)


async def json_bytes(request: Request, limit: int = 1024 * 1024) -> bytes:
    """The request's JSON body as bytes (checked as :func:`typed_body` checks it), to decode
    into more than one shape with :func:`decode_json`."""
    return await _json_bytes(request, limit)


def decode_json(body: bytes, kind: type[T], what: str) -> T:
    """:func:`typed_body` for bytes from :func:`json_bytes`."""
    return _decode_typed(body, kind, what)


async def optional_body(request: Request, kind: type[T], what: str, default: T, limit: int = 1024 * 1024) -> T:
    """:func:`typed_body` for an optional body: none at all (or only whitespace) is ``default``."""
    body = await _json_bytes(request, limit)
    return default if not body.strip() else _decode_typed(body, kind, what)


def _decode_typed(body: bytes, kind: type[T], what: str) -> T:
    code = f"invalid_{what.replace(' ', '_')}"
    problem = member_problem(body, kind)
    if problem is not None:
        raise InvalidInput(f"Invalid {what}: {problem}", code=code)
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        whole = _with_whole_numbers(body, kind)
        if whole is not None:
            return whole
        raise InvalidInput(f"Invalid {what}: {exc}", code=code) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}", code="malformed_json") from None


def _with_whole_numbers(body: bytes, kind: type[T]) -> T | None:
    """``body`` as ``kind`` when its only fault was a whole number written as ``2.0`` or ``1e3``
    where an integer belongs (JSON Schema's ``integer`` admits both), else None."""
    try:
        return msgspec.convert(_whole(_decode_any.decode(body)), kind)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _whole(value: Any) -> Any:
    if isinstance(value, Decimal):
        whole = value.is_finite() and value == value.to_integral_value() and abs(value) < 2**63
        return int(value) if whole else value
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def time_text(us: int | None) -> str | None:
    return None if us is None else rfc3339(us)
