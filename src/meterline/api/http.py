"""Small request/response helpers shared by the endpoint modules."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from meterline.clock import rfc3339, to_us
from meterline.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

_encode = msgspec.json.Encoder(decimal_format="number").encode
_decode_any = msgspec.json.Decoder()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The body is {declared} bytes; at most {limit} are allowed", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The body is over {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def json_body(request: Request, limit: int = 1024 * 1024) -> Any:
    if media_type(request) not in ("application/json", ""):
        raise UnsupportedMediaType("Send application/json", code="unsupported_media_type")
    body = await read_body(request, limit)
    try:
        return _decode_any.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}", code="malformed_json") from None


def parse_time(name: str, value: str | None) -> int | None:
    """An RFC 3339 query parameter as epoch microseconds (an empty value is not a time)."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidInput(
            f"`{name}` must be an RFC 3339 time, e.g. 2026-01-01T00:00:00Z", code="invalid_time"
        ) from None
    if t.tzinfo is None:
        raise InvalidInput(f"`{name}` must carry a UTC offset, e.g. 2026-01-01T00:00:00Z", code="invalid_time")
    return to_us(t)


def parse_int(name: str, value: str | None, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise InvalidInput(f"`{name}` must be an integer", code="invalid_parameter") from None
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
    """Decode the JSON body straight into ``kind`` (numbers stay exact for Decimal fields)."""
    if media_type(request) not in ("application/json", ""):
        raise UnsupportedMediaType("Send application/json", code="unsupported_media_type")
    body = await read_body(request, limit)
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        whole = _with_whole_numbers(body, kind)
        if whole is not None:
            return whole
        raise InvalidInput(f"Invalid {what}: {exc}", code=f"invalid_{what.replace(' ', '_')}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}", code="malformed_json") from None


_decode_exact = msgspec.json.Decoder(float_hook=Decimal)


def _with_whole_numbers(body: bytes, kind: type[T]) -> T | None:
    """``body`` as ``kind`` when its only fault was a whole number written as ``2.0`` or ``1e3``
    where an integer belongs (JSON Schema's ``integer`` admits both), else None."""
    try:
        return msgspec.convert(_whole(_decode_exact.decode(body)), kind)
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
