"""The one-decode path (``decode_body``) gives exactly what the field-by-field path gives:
the same candidates (events, raw bytes, digests, rejections and their messages) or the same
error, for valid bodies, bodies with every kind of bad event, and bodies bad as a whole."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.domain.errors import MeterlineError
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.events.typed import decode_body
from meterline.domain.nesting import MAX_DEPTH

NOW = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z
LIMITS = Limits(max_events=5, future_skew_us=300_000_000, late_window_us=90 * 86_400_000_000)
SHAPES = ("single", "batch", "any")


def field_by_field(body: bytes, shape: str) -> Any:
    try:
        return decode_events(split_body(body, shape, LIMITS.max_events), "ns", NOW, LIMITS)
    except MeterlineError as exc:
        return (type(exc), exc.code, str(exc))


def one_decode(body: bytes, shape: str) -> Any:
    try:
        return decode_body(body, shape, "ns", NOW, LIMITS)
    except MeterlineError as exc:
        return (type(exc), exc.code, str(exc))


def same(body: bytes) -> None:
    for shape in SHAPES:
        assert one_decode(body, shape) == field_by_field(body, shape), (shape, body)


def ev(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": "acme"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def deep(levels: int) -> Any:
    value: Any = {"v": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


CASES = [
    ev(data={"tokens": 5, "model": "gpt"}),
    ev(),
    ev(data=None),
    ev(id=None),
    ev(id=""),
    ev(id="x" * 512),
    ev(id="x" * 513),
    ev(subject="é" * 512),
    ev(id=7),
    ev(specversion=None),
    ev(specversion="0.3"),
    ev(specversion=1.0),
    ev(time="2026-03-01T11:00:00Z"),
    ev(time="2026-03-01T17:29:59.123456+05:30"),
    ev(time="2026-03-01T11:00:00"),
    ev(time="yesterday"),
    ev(time="2026-03-01T12:10:00Z"),
    ev(time="2025-01-01T00:00:00Z"),
    ev(time=None, data={"n": 1.5, "big": 123456789012345678, "s": "1e999"}),
    ev(data=[1, 2]),
    ev(data="text"),
    ev(data={}),
    ev(data=deep(MAX_DEPTH)),
    ev(data=deep(MAX_DEPTH + 1)),
    ev(data={"s": "[[[[{{{{" * 20}),
    ev(datacontenttype="application/json"),
    ev(datacontenttype="application/json; charset=utf-8"),
    ev(datacontenttype="text/plain"),
    ev(dataschema="https://example.com/s"),
    ev(dataschema=3),
    ev(extension="kept in raw", other={"x": [1]}),
    "not an object",
    42,
    None,
    [],
]


@pytest.mark.parametrize("event", CASES, ids=[str(i) for i in range(len(CASES))])
def test_each_event_alone_and_in_a_batch(event: Any) -> None:
    same(msgspec.json.encode(event))
    same(msgspec.json.encode([ev(id="first"), event, ev(id="last")]))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{not json",
        b"42",
        b'"text"',
        b"[]",
        b" [" + json.dumps(ev()).encode() + b"] \n",
        json.dumps(ev()).encode() + b"\n",
        b"[" + b",".join([json.dumps(ev(id=str(i))).encode() for i in range(6)]) + b"]",
        b"[" + b",".join([json.dumps(ev(id=str(i))).encode() for i in range(5)]) + b"]",
        b"[" * 5000 + b"]" * 5000,
        b"[" + json.dumps(ev()).encode() + b"," + b"[" * 3000 + b"]" * 3000 + b"]",
        b'[{"specversion":"1.0","id":"a","id":"b","source":"s","type":"t","subject":"x"}]',
        b'[{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x"},]',
        b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x"} trailing',
    ],
)
def test_whole_bodies(body: bytes) -> None:
    same(body)


texts = st.one_of(st.text(max_size=6), st.sampled_from(["", "1.0", "x" * 513, "2026-03-01T11:59:00Z"]))
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "specversion": st.one_of(st.just("1.0"), values),
        "id": st.one_of(texts, values),
        "source": texts,
        "type": texts,
        "subject": texts,
        "time": st.one_of(
            st.sampled_from(["2026-03-01T11:59:00Z", "2026-03-01T11:59:00", "2030-01-01T00:00:00Z"]), values
        ),
        "data": values,
        "datacontenttype": st.sampled_from(["application/json", "text/csv"]),
        "ext": values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(envelopes, values), max_size=7))
def test_any_batch(events: list[Any]) -> None:
    same(msgspec.json.encode(events))
    if events:
        same(msgspec.json.encode(events[0]))
