"""How deeply JSON may nest: a bound meterline sets itself instead of inheriting one.

msgspec (like every recursive parser) stops at Python's recursion limit with a
``RecursionError``; where that happens depends on how deep the stack already is, and a
document that parses in one place can fail when it is encoded again somewhere deeper. So
meterline fixes its own bound, far below that limit: a request body, and each event's
``data``, may nest arrays and objects at most :data:`MAX_DEPTH` levels deep.

Three tools, from cheap to thorough:

- :func:`nests_deeper` walks an already decoded value (microseconds for the flat ``data`` of
  a usual event);
- :func:`too_deep` checks raw bytes before any parser recurses into them;
- :func:`split_array` cuts a JSON array into the raw bytes of its items without recursing,
  for the rare batch too deep for the parser, so that its other events can still be read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_DEPTH = 64
"""Most levels of arrays and objects in a request body or in one event's ``data``."""

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_OPENERS_CLOSERS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_INNERMOST = re.compile(rb"\(\)")
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


def nests_deeper(value: object, limit: int = MAX_DEPTH) -> bool:
    """Whether a decoded JSON value has more than ``limit`` levels of lists and dicts."""
    if type(value) is dict:  # the usual event data, one flat object, without building a stack
        for child in value.values():
            if type(child) is dict or type(child) is list:
                break
        else:
            return limit < 1
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[object]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def too_deep(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether raw JSON may nest more than ``limit`` levels. Never recurses: strings are cut
    out, then each pass removes the innermost bracket pairs (one level per pass). Unbalanced
    brackets count as open levels, so a malformed body is never underestimated."""
    brackets = _STRING.sub(b"", body).translate(_OPENERS_CLOSERS, _NOT_BRACKETS)
    passes = 0
    while brackets and passes < limit:
        shorter = _INNERMOST.sub(b"", brackets)
        if len(shorter) == len(brackets):
            return passes + brackets.count(b"(") > limit
        brackets, passes = shorter, passes + 1
    return bool(brackets)


def split_array(body: bytes) -> list[bytes] | None:
    """The raw items of a JSON array, found without recursion; None if ``body`` is not one
    well-bracketed array. Each item is returned as sent, for the caller to parse or reject."""
    start = body.find(b"[")
    if start < 0 or body[:start].strip():
        return None
    items: list[bytes] = []
    depth, item_start = 0, start + 1
    for token in _TOKEN.finditer(body, start):
        kind = token.group()[:1]
        if kind in b"[{":
            depth += 1
        elif kind in b"]}":
            depth -= 1
            if depth == 0:
                last = body[item_start : token.start()].strip()
                if last or items:
                    items.append(last)
                return items if not body[token.end() :].strip() else None
        elif kind == b"," and depth == 1:
            items.append(body[item_start : token.start()].strip())
            item_start = token.end()
    return None
