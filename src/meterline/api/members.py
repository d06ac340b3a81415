"""Members of typed request bodies held to strict rules before msgspec reads them.

msgspec decodes a ``Decimal`` member from a JSON number exactly, but from a string it calls
``Decimal(text)``, which also reads ``"1_000"``, ``"٣"``, ``" 7 "``, ``"+3"`` and ``"NaN"``; an
``int`` member takes any integer, 10**30 included, which SQLite, ``timedelta`` and C code
cannot hold; and a ``datetime`` member takes year 1 or 9999, from which no period can be
computed. :func:`member_problem` walks a body (decoded with exact decimals) alongside the type
it will be decoded into and reports the first member that breaks these rules:

- a ``Decimal`` member is a quantity (``meterline.domain.decimals.to_quantity``: JSON number grammar
  in strings too, finite, at most 38 digits, exponent within +-30);
- an ``int`` member fits in 64 bits;
- a ``datetime`` member with a UTC offset lies in ``[1970-01-01, 9000-01-01)`` UTC.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
from msgspec import inspect as mi

from meterline.domain.decimals import NotAQuantity, to_quantity

INT_LIMIT = 2**63
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
_exact = msgspec.json.Decoder(float_hook=Decimal)


def member_problem(body: bytes, kind: Any) -> str | None:
    """The first member of ``body`` that ``kind`` would read wrongly, as a message, or None."""
    if _info(kind) is None:
        return None
    try:
        tree = _exact.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None  # the typed decode reports it
    return tree_problem(tree, kind)


def tree_problem(tree: Any, kind: Any) -> str | None:
    """:func:`member_problem` for a body already decoded (with ``float_hook=Decimal``)."""
    info = _info(kind)
    return None if info is None else _walk(tree, info, "$")


@functools.cache
def _info(kind: Any) -> mi.Type | None:
    """``kind``'s type tree, or None when it holds no Decimal, int or datetime to check."""
    info = mi.type_info(kind)
    return info if _has_numbers(info, set()) else None


def _has_numbers(t: mi.Type, seen: set[int]) -> bool:
    if id(t) in seen:
        return False
    seen.add(id(t))
    if isinstance(t, mi.DecimalType | mi.IntType | mi.DateTimeType):
        return True
    return any(_has_numbers(child, seen) for child in _children(t))


def _children(t: mi.Type) -> list[mi.Type]:
    if isinstance(t, mi.Metadata):
        return [t.type]
    if isinstance(t, mi.StructType | mi.DataclassType | mi.TypedDictType | mi.NamedTupleType):
        return [f.type for f in t.fields]
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return [t.item_type]
    if isinstance(t, mi.TupleType):
        return list(t.item_types)
    if isinstance(t, mi.DictType):
        return [t.value_type]
    if isinstance(t, mi.UnionType):
        return list(t.types)
    return []


def _walk(value: Any, t: mi.Type, path: str) -> str | None:
    if isinstance(t, mi.Metadata):
        return _walk(value, t.type, path)
    if isinstance(t, mi.DecimalType):
        return _decimal(value, path)
    if isinstance(t, mi.IntType):
        return _int(value, path)
    if isinstance(t, mi.DateTimeType):
        return _datetime(value, path)
    if isinstance(t, mi.UnionType):
        return next((p for member in t.types if (p := _walk(value, member, path))), None)
    for child_path, child, child_type in _members(value, t, path):
        problem = _walk(child, child_type, child_path)
        if problem:
            return problem
    return None


def _members(value: Any, t: mi.Type, path: str) -> list[tuple[str, Any, mi.Type]]:
    if isinstance(value, dict):
        if isinstance(t, mi.StructType | mi.DataclassType | mi.TypedDictType):
            named = [f for f in t.fields if f.encode_name in value]
            return [(f"{path}.{f.encode_name}", value[f.encode_name], f.type) for f in named]
        if isinstance(t, mi.DictType):
            return [(f"{path}[{k!r}]", v, t.value_type) for k, v in value.items()]
    if isinstance(value, list):
        if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
            return [(f"{path}[{i}]", v, t.item_type) for i, v in enumerate(value)]
        if isinstance(t, mi.TupleType | mi.NamedTupleType):
            types = t.item_types if isinstance(t, mi.TupleType) else tuple(f.type for f in t.fields)
            return [(f"{path}[{i}]", v, it) for i, (v, it) in enumerate(zip(value, types, strict=False))]
    return []


def _decimal(value: Any, path: str) -> str | None:
    if not isinstance(value, str | int | Decimal) or isinstance(value, bool):
        return None  # not a number at all: the typed decode names the expected type
    try:
        to_quantity(value)
    except NotAQuantity as exc:
        return f"{exc} - at `{path}`"
    return None


def _int(value: Any, path: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_LIMIT <= value < INT_LIMIT:
        return f"the integer is out of range (at most 19 digits) - at `{path}`"
    return None


def _datetime(value: Any, path: str) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        t = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        return None  # the typed decode names the expected format
    if t.tzinfo is not None and not EARLIEST <= t < LATEST:
        return f"the time must lie between 1970-01-01 and 9000-01-01 - at `{path}`"
    return None
