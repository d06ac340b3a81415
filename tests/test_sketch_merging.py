"""The fast paths of sketch merging and estimating give exactly what the byte-by-byte ones give:
merging registers as integers, estimating from a register histogram, and a window's histogram
counted by the store instead of its registers."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from meterline.domain.errors import InvalidInput
from meterline.domain.meters.query import MeterQuery, Unmergeable, merge_sketches
from meterline.domain.meters.sketch import Histogram, M, Sketch
from meterline.domain.meters.windows import WindowSize


def dense(sketch: Sketch) -> bytes:
    """The sketch's 4,096 registers."""
    registers = bytearray(M)
    for index, rank in zip(*sketch.pairs(), strict=True):
        registers[index] = rank
    return bytes(registers)


def sketches(rng: random.Random, n: int) -> tuple[Sketch, Sketch]:
    a, b = Sketch(), Sketch()
    for _ in range(n):
        (a if rng.random() < 0.5 else b).add(f"user-{rng.getrandbits(64):x}")
    return a, b


@pytest.mark.parametrize("n", [0, 1, 40, 3_000, 20_000, 300_000])
def test_merge_and_estimates_equal_the_byte_by_byte_ones(n: int) -> None:
    a, b = sketches(random.Random(n), n)
    merged = a.copy()
    merged.merge(b)
    registers = bytes(map(max, dense(a), dense(b)))
    assert dense(merged) == registers
    indices, ranks = merged.pairs()
    assert indices == [i for i, r in enumerate(registers) if r]
    histogram = Counter(ranks)
    assert Histogram.of_ranks(list(histogram), list(histogram.values())).estimate() == merged.estimate()


def test_registers_no_stored_sketch_holds_are_merged_byte_by_byte() -> None:
    odd, usual = bytearray(M), bytearray(M)
    odd[3], usual[3], usual[4] = 200, 5, 9
    merged = Sketch(bytearray(odd))
    merged.merge(Sketch(usual))
    assert dense(merged) == bytes(map(max, odd, usual))


def test_a_histogram_refuses_ranks_no_sketch_has() -> None:
    with pytest.raises(InvalidInput):
        Histogram.of_ranks([54], [1])
    with pytest.raises(InvalidInput):
        Histogram.of_ranks([3], [M + 1])


def test_a_window_histogram_takes_nothing_more() -> None:
    a, b = sketches(random.Random(7), 500)
    counts = Counter(a.pairs()[1])
    window = Histogram.of_ranks(list(counts), list(counts.values()))
    query = MeterQuery(start=0, end=86_400, window_size=WindowSize.DAY)
    got = merge_sketches([("s", "[]", 0, window)], [], [0, 86_400], query, ())
    assert [int(r.value) for r in got] == [a.estimate()]
    with pytest.raises(Unmergeable):
        merge_sketches([("s", "[]", 0, window), ("s", "[]", 60, b)], [], [0, 86_400], query, ())
    with pytest.raises(Unmergeable):
        merge_sketches([("s", "[]", 0, window)], [("s", "[]", 60, "u1")], [0, 86_400], query, ())
