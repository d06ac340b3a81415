"""A meter's ``groupBy`` change on real SQLite files: the meter is derived again from the
ledger (its backfill restarted at offset 0, the same mechanism as a new meter and ``rebuild``),
batches computed with the old definition never land, and reads during the re-derivation wait
for it or answer 503 ``meter_backfilling``, never part of the usage."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from conftest import T0_US
from test_aggregation import open_backend, rebuild_identical

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.bootstrap import attach_aggregator
from meterline.domain.errors import Backfilling
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery
from meterline.services.aggregation import Aggregator

LIMITS = Limits(10_000, 300_000_000, None)
TOKENS = MeterSpec(
    slug="tokens", event_type="t", aggregation=Aggregation.SUM, value_property="$.v", group_by={"model": "$.model"}
)
REGIONS = {"model": "$.model", "region": "$.region"}
END_S = T0_US // 1_000_000 + 3600


def region(i: int) -> str:
    return ("eu", "us", "ap")[i % 3]


def send(b: EmbeddedBackend, first: int, n: int) -> None:
    """Events ``first .. first+n-1``: value = id, model m0/m1 by parity, region by id mod 3."""
    events = [
        {"specversion": "1.0", "id": str(i), "source": "a", "type": "t", "subject": f"c{i % 4}",
         "time": "2026-03-01T00:10:00Z", "data": {"v": i, "model": f"m{i % 2}", "region": region(i)}}
        for i in range(first, first + n)
    ]  # fmt: skip
    found = decode_events(split_body(msgspec.json.encode(events), "batch", 10_000), "default", T0_US, LIMITS)
    assert all(o.status.value == "accepted" for o in b.ledger.append("default", found).result(10))


def by(b: EmbeddedBackend, dimension: str) -> dict[str, Decimal]:
    meter = b.meters.get("default", "tokens")
    rows = b.meters.query(meter, MeterQuery(start=0, end=END_S, group_by=(dimension,)))
    return {str(r.group_by[dimension]): r.value for r in rows if r.value}


def expected(ids: range, key: object) -> dict[str, Decimal]:
    sums: Counter[str] = Counter()
    for i in ids:
        sums[key(i)] += i  # type: ignore[operator]
    return {k: Decimal(v) for k, v in sums.items()}


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[EmbeddedBackend]:
    b = open_backend(tmp_path)
    b.meters.create("default", TOKENS)
    yield b
    b.close()


def test_a_new_group_by_counts_every_earlier_event_by_the_new_key(backend: EmbeddedBackend, tmp_path: Path) -> None:
    send(backend, 1, 300)
    aggregator = Aggregator(backend.ledger, backend.usage, cap=100, chunk=64)
    aggregator.drain()
    before = by(backend, "model")
    backend.meters.update("default", "tokens", msgspec.structs.replace(TOKENS, group_by=REGIONS))
    aggregator.meters_changed()
    send(backend, 301, 30)  # live events after the change, aggregated alongside the re-derivation
    aggregator.drain()
    assert by(backend, "region") == expected(range(1, 331), region)
    assert by(backend, "model") == expected(range(1, 331), lambda i: f"m{i % 2}")
    assert before == expected(range(1, 301), lambda i: f"m{i % 2}")
    assert backend.meters.pending_backfill() == 0
    backend.close()
    assert rebuild_identical(tmp_path)  # bit for bit what a rebuild from the ledger gives


def test_a_batch_computed_with_the_old_group_by_is_refused(backend: EmbeddedBackend) -> None:
    send(backend, 1, 50)
    aggregator = Aggregator(backend.ledger, backend.usage, cap=100)
    real_apply = backend.usage.apply

    def apply_after_a_group_by_change(batch):  # type: ignore[no-untyped-def]
        backend.usage.apply = real_apply  # type: ignore[method-assign]
        backend.meters.update("default", "tokens", msgspec.structs.replace(TOKENS, group_by=REGIONS))
        return real_apply(batch)  # computed for {model} only: it must not land

    backend.usage.apply = apply_after_a_group_by_change  # type: ignore[method-assign]
    aggregator.drain()
    assert aggregator.stats.refused >= 1
    assert by(backend, "region") == expected(range(1, 51), region)


def test_reads_during_the_re_derivation_wait_or_say_it_is_not_done(backend: EmbeddedBackend) -> None:
    send(backend, 1, 40)
    aggregator = attach_aggregator(backend, cap=100, chunk=16, max_wait=0.05)  # not started
    aggregator.drain()
    backend.meters.update("default", "tokens", msgspec.structs.replace(TOKENS, group_by=REGIONS))
    with pytest.raises(Backfilling) as err:  # the aggregator is stopped: the bounded wait ends
        by(backend, "region")
    assert err.value.status == 503 and err.value.extra == {"applied": 0, "to": 40}
    aggregator._step()  # one live step, then one backfill chunk of 16
    with pytest.raises(Backfilling) as err:
        by(backend, "model")
    assert err.value.extra == {"applied": 16, "to": 40}
    aggregator.drain()
    assert by(backend, "region") == expected(range(1, 41), region)
