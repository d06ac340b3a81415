"""The client's on-disk spool on real files: order, acknowledgement, torn tails, budget, slots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meterline.client.spool import MAGIC, Spool, SpoolError, SpoolLocked
from meterline.client.stores import MemoryQueue, open_spool, slots


def _fill(spool: Spool, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        assert spool.append(b'{"i":%d}' % i) is None


def _drain(spool: Spool, batch: int = 7) -> list[bytes]:
    out: list[bytes] = []
    while spool.pending:
        b = spool.read(batch, 1 << 20)
        assert b.payloads, "pending events but nothing read"
        out += b.payloads
        spool.ack(b)
    return out


def test_records_come_back_in_order_across_segments_and_acked_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", segment_bytes=4096)
    _fill(spool, 2000)
    assert len(list((tmp_path / "s").glob("*.seg"))) > 5
    assert _drain(spool) == [b'{"i":%d}' % i for i in range(2000)]
    assert len(list((tmp_path / "s").glob("*.seg"))) == 1  # only the one being written
    spool.close()


def test_unacked_records_survive_a_reopen_and_acked_ones_do_not_come_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", segment_bytes=4096)
    _fill(spool, 100)
    batch = spool.read(40, 1 << 20)
    spool.ack(batch)
    spool.read(30, 1 << 20)  # read, never acknowledged: must come back
    spool.close()
    again = Spool(tmp_path / "s", segment_bytes=4096)
    assert again.pending == 60
    _fill(again, 5, start=100)
    assert _drain(again) == [b'{"i":%d}' % i for i in range(40, 105)]
    again.close()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_torn_tail_is_reported_and_never_read(tmp_path: Path, damage: str) -> None:
    spool = Spool(tmp_path / "s")
    _fill(spool, 10)
    spool.close()
    (segment,) = (tmp_path / "s").glob("*.seg")
    data = segment.read_bytes()
    if damage == "truncate":  # a record cut short, as a crash in the middle of write() leaves it
        segment.write_bytes(data[:-3])
    else:  # the last record's bytes changed after it was written
        segment.write_bytes(data[:-2] + bytes([data[-2] ^ 0xFF]) + data[-1:])
    again = Spool(tmp_path / "s")
    assert again.pending == 9
    (torn,) = again.torn
    assert torn.segment == segment and torn.size == len(b'{"i":9}') + 8 - (3 if damage == "truncate" else 0)
    _fill(again, 1, start=10)  # new records go to a new segment, after the torn one
    assert _drain(again) == [b'{"i":%d}' % i for i in [*range(9), 10]]
    again.close()


def test_a_file_that_is_not_a_segment_is_reported(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "0000000000000001.seg").write_bytes(b"something else entirely")
    spool = Spool(tmp_path / "s")
    assert spool.pending == 0 and spool.torn[0].reason == "not a spool segment"
    spool.close()


def test_a_broken_cursor_is_an_error_not_a_silent_resend(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "cursor").write_text("garbage")
    with pytest.raises(SpoolError, match="cursor"):
        Spool(tmp_path / "s")


def test_the_disk_budget_drops_new_records_and_acks_free_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", segment_bytes=4096, max_bytes=8192)
    reasons = [spool.append(b"x" * 100) for _ in range(100)]
    kept = reasons.count(None)
    assert 50 < kept < 80 and set(reasons[kept:]) == {"spool_full"}
    _drain(spool)
    assert spool.append(b"x" * 100) is None
    spool.close()


def test_one_process_per_spool_and_slots_for_the_others(tmp_path: Path) -> None:
    first = open_spool(tmp_path, 4096, 1 << 20)
    with pytest.raises(SpoolLocked):
        Spool(first.path)
    second = open_spool(tmp_path, 4096, 1 << 20)
    assert [first.path.name, second.path.name] == ["slot-0", "slot-1"] == [p.name for p in slots(tmp_path)]
    _fill(first, 3)
    first.close()
    taken_over = open_spool(tmp_path, 4096, 1 << 20)  # a free slot is reused, with its events
    assert taken_over.path.name == "slot-0" and taken_over.pending == 3
    taken_over.close()
    second.close()


def test_sync_writes_the_segment_to_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    _fill(spool, 3)
    spool.sync()
    (segment,) = (tmp_path / "s").glob("*.seg")
    assert segment.read_bytes().startswith(MAGIC) and os.stat(segment).st_size > len(MAGIC)
    spool.close()


def test_the_memory_queue_is_bounded_and_keeps_order() -> None:
    q = MemoryQueue(3)
    assert [q.append(b"%d" % i) for i in range(4)] == [None, None, None, "queue_full"]
    batch = q.read(2, 1 << 20)
    assert batch.payloads == [b"0", b"1"] and q.pending == 3
    assert q.append(b"9") is None  # the batch in flight is outside the bound
    q.ack(batch)
    assert q.read(10, 1 << 20).payloads == [b"2", b"9"]
