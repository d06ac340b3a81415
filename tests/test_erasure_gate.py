"""``ErasureGate`` (services/log_erasure.py): a read is answered only when no erasure was
unfinished from before it to after it; the catalog's state is a scripted sequence here, the
stack test (test_scale_erasure.py) runs it over PostgreSQL and ClickHouse."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meterline.domain.errors import ErasureInProgress
from meterline.services.log_erasure import ErasureGate


def scripted(states: list[tuple[int, bool]]) -> Callable[[], tuple[int, bool]]:
    """The states in order, the last one for ever."""
    seen = list(states)

    def state() -> tuple[int, bool]:
        return seen.pop(0) if len(seen) > 1 else seen[0]

    return state


def test_a_read_with_no_erasure_is_answered_with_one_look_after_it() -> None:
    looks: list[int] = []
    gate = ErasureGate(lambda: looks.append(1) or (4, False), max_wait=5, pause=0)
    assert gate.read(lambda: "a") == "a"  # the first read looks before and after
    assert gate.read(lambda: "b") == "b"  # later ones look after only
    assert len(looks) == 3


def test_a_read_during_which_an_erasure_began_and_finished_is_done_again() -> None:
    reads: list[int] = []
    gate = ErasureGate(scripted([(4, False), (5, False), (5, False)]), max_wait=5, pause=0)
    assert gate.read(lambda: reads.append(1) or len(reads)) == 2  # the newest id moved: read again


def test_a_read_waits_for_an_unfinished_erasure_and_reads_after_it() -> None:
    reads: list[int] = []
    gate = ErasureGate(scripted([(5, True), (5, True), (5, False)]), max_wait=5, pause=0)
    assert gate.read(lambda: reads.append(1) or len(reads)) == 1  # read once, after the erasure


def test_an_erasure_begun_during_the_read_makes_it_wait_and_read_again() -> None:
    reads: list[int] = []
    gate = ErasureGate(scripted([(4, False), (5, True), (5, True), (5, False)]), max_wait=5, pause=0)
    assert gate.read(lambda: reads.append(1) or len(reads)) == 2


def test_an_erasure_that_stays_unfinished_past_the_wait_is_a_503() -> None:
    reads: list[int] = []
    gate = ErasureGate(lambda: (5, True), max_wait=0.05, pause=0.01)
    with pytest.raises(ErasureInProgress) as raised:
        gate.read(lambda: reads.append(1))
    assert raised.value.status == 503 and raised.value.code == "erasure_in_progress" and reads == []


def test_a_read_inside_a_read_looks_at_nothing_more() -> None:
    looks: list[int] = []
    gate = ErasureGate(lambda: looks.append(1) or (0, False), max_wait=5, pause=0)
    assert gate.read(lambda: gate.read(lambda: "inner")) == "inner"
    assert len(looks) == 2
