"""The two bounds other modules lean on: JSON nesting depth, and caches bounded by size."""

from __future__ import annotations

import json

import msgspec
import pytest

from meterline.domain.bounded import BoundedCache
from meterline.domain.nesting import MAX_DEPTH, nests_deeper, split_array, too_deep


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("[]", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["[[[[", "]]]]", {"k": "\\"[["}]', 2),  # brackets inside strings, escaped quotes
        (nested(MAX_DEPTH), MAX_DEPTH),
        (nested(MAX_DEPTH + 1), MAX_DEPTH + 1),
        (nested(5_000), 5_000),
    ],
)
def test_depth_of_raw_and_decoded_json_agree(text: str, depth: int) -> None:
    assert too_deep(text.encode()) == (depth > MAX_DEPTH)
    assert too_deep(text.encode(), depth) is False and too_deep(text.encode(), depth - 1) is (depth > 0)
    if depth < 500:
        assert nests_deeper(json.loads(text), depth) is False
        assert nests_deeper(json.loads(text), depth - 1) is (depth > 0)


def test_unbalanced_brackets_count_as_open_levels() -> None:
    assert too_deep(b"[" * (MAX_DEPTH + 1))
    assert too_deep(b"]" * 10_000 + b"[" * (MAX_DEPTH + 1))
    assert not too_deep(b"[[}]")  # malformed but shallow: the parser reports it


def test_split_array_cuts_items_without_recursing() -> None:
    deep = nested(100_000)
    body = f'[ {{"a": "x,]"}} , {deep}, 5, "s,t" ]'.encode()
    items = split_array(body)
    assert items is not None and [i[:8] for i in items] == [b'{"a": "x', b"[[[[[[[[", b"5", b'"s,t"']
    assert msgspec.json.decode(items[0]) == {"a": "x,]"}
    assert split_array(b"[]") == [] and split_array(b" [ 1 ] ") == [b"1"]
    for broken in (b"", b"{}", b"[1", b"[1]]", b"x[1]", b"[1] x"):
        assert split_array(broken) is None, broken


def test_a_bounded_cache_keeps_within_entries_and_size() -> None:
    cache: BoundedCache[int, bytes] = BoundedCache(max_entries=3, max_size=100, size=len)
    for key in range(5):
        cache.put(key, b"x" * 10)
    assert len(cache) == 3 and cache.get(0) is None and cache.get(4) == b"x" * 10
    cache.put(9, b"y" * 26)  # larger than a quarter of the size bound: never kept
    assert cache.get(9) is None
    for key in range(10, 14):
        cache.put(key, b"z" * 25)
    assert cache.size <= 100 and len(cache) <= 3
    assert cache.get(13) == b"z" * 25


def test_a_bounded_cache_evicts_the_least_recently_used() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=2, max_size=10, size=lambda v: 1)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    calls: list[str] = []
    square = cache.memo(lambda k: calls.append(k) or len(k) ** 2)
    assert square("abc") == 9 and square("abc") == 9 and calls == ["abc"]
