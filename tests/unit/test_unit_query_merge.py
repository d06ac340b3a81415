"""Merging rollup bucket states into answer rows (domain.meters.query), directly: every
aggregation, windows, subjects, group-by, filters and the row cap."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from meterline.domain.errors import InvalidInput
from meterline.domain.meters.model import Aggregation
from meterline.domain.meters.query import (
    BucketState,
    MeterQuery,
    QueryLimits,
    TooManyRows,
    check_dimensions,
    merge,
    merge_unique,
)

D = Decimal
DIMS = ("model", "region")


def state(
    subject: str, bucket: int, value: str, groups: tuple[str | None, ...] = ("gpt", "eu"), seq: int = 1
) -> BucketState:
    v = D(value)
    return BucketState(subject, json.dumps(list(groups)), bucket, 1, v, v, v, (bucket, seq, v))


STATES = [
    state("acme", 0, "1.5", seq=1),
    state("acme", 60, "2.25", seq=2),
    state("acme", 3600, "10", seq=3),
    state("beta", 120, "0.000000000000000001", ("llama", "us"), seq=4),
    state("beta", 3660, "-4", ("gpt", None), seq=5),
]
HOURS = (0, 3600, 7200)


@pytest.mark.parametrize(
    ("aggregation", "first_hour", "second_hour"),
    [
        (Aggregation.SUM, D("3.750000000000000001"), D("6")),
        (Aggregation.COUNT, D(3), D(2)),
        (Aggregation.AVG, D("1.250000000000000000333333333"), D("3")),  # AVERAGE context: 28 digits
        (Aggregation.MIN, D("0.000000000000000001"), D("-4")),
        (Aggregation.MAX, D("2.25"), D("10")),
        (Aggregation.LATEST, D("0.000000000000000001"), D("-4")),
    ],
)
def test_every_aggregation_per_window(aggregation: Aggregation, first_hour: Decimal, second_hour: Decimal) -> None:
    rows = merge(aggregation, STATES, HOURS, MeterQuery(), DIMS)
    assert [(r.window_start, r.window_end) for r in rows] == [(0, 3600), (3600, 7200)]
    assert rows[0].value == first_hour
    assert rows[1].value == second_hour
    assert all(r.subject is None and r.group_by == {} for r in rows)


def test_group_by_subject_and_dimension() -> None:
    rows = merge(Aggregation.SUM, STATES, (0, 7200), MeterQuery(group_by=("subject", "model")), DIMS)
    assert [(r.subject, r.group_by, r.value) for r in rows] == [
        ("acme", {"model": "gpt"}, D("13.75")),
        ("beta", {"model": "gpt"}, D("-4")),
        ("beta", {"model": "llama"}, D("0.000000000000000001")),
    ]


def test_filters_keep_or_drop_values_including_missing_ones() -> None:
    only_eu = MeterQuery(filters=(("region", ("eu",), False),))
    assert [r.value for r in merge(Aggregation.SUM, STATES, (0, 7200), only_eu, DIMS)] == [D("13.75")]
    not_gpt = MeterQuery(filters=(("model", ("gpt",), True),))
    assert [r.value for r in merge(Aggregation.SUM, STATES, (0, 7200), not_gpt, DIMS)] == [D("0.000000000000000001")]
    by_subject = MeterQuery(filters=(("subject", ("beta",), False),))
    assert [r.value for r in merge(Aggregation.COUNT, STATES, (0, 7200), by_subject, DIMS)] == [D(2)]


def test_subjects_combined_or_apart() -> None:
    apart = merge(Aggregation.SUM, STATES, (0, 7200), MeterQuery(subjects=("acme", "beta")), DIMS)
    assert [r.subject for r in apart] == ["acme", "beta"]
    together = MeterQuery(subjects=("acme", "beta"), combine_subjects=True)
    assert [(r.subject, r.value) for r in merge(Aggregation.SUM, STATES, (0, 7200), together, DIMS)] == [
        (None, D("9.750000000000000001"))
    ]


def test_row_cap_is_enforced() -> None:
    capped = MeterQuery(group_by=("subject",), limits=QueryLimits(max_rows=1))
    with pytest.raises(TooManyRows):
        merge(Aggregation.SUM, STATES, (0, 7200), capped, DIMS)


def test_unique_count_counts_distinct_values_per_window() -> None:
    values = [
        ("acme", '["gpt", "eu"]', 0, "u1"),
        ("acme", '["gpt", "eu"]', 60, "u1"),
        ("acme", '["gpt", "eu"]', 120, "u2"),
        ("beta", '["gpt", "eu"]', 3600, "u1"),
    ]
    rows = merge_unique(values, HOURS, MeterQuery(), DIMS)
    assert [(r.window_start, r.value) for r in rows] == [(0, D(2)), (3600, D(1))]


def test_unknown_dimension_names_the_known_ones() -> None:
    with pytest.raises(InvalidInput) as err:
        check_dimensions(MeterQuery(group_by=("colour",)), DIMS)
    assert err.value.code == "invalid_group_by"
    assert "model" in str(err.value)
