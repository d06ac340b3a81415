"""The aggregator alone, in-process: how fast a backlog of ledger events becomes rollups, and
where the time goes.

    ./run bench aggregation                       # 200,000 events, 1000 subjects, SUM + COUNT meters
    ./run bench aggregation --events 500000 --subjects 10000 --fsync full
    ./run bench aggregation --gauge               # the tokens meter as TIME_WEIGHTED_SUM

Seeds the ledger through the real ingest path (``EmbeddedBackend``, 1000-event appends, no
aggregator running: this is the ack path alone), then drains it with one ``Aggregator`` on the
calling thread, timing its phases: reading ledger entries, replaying them through the meters
(JSON decode of each event's data, meter evaluation, fold), and applying each chunk (rollup
upserts, subjects, offset: one writer transaction). Checks the result against the ledger.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.domain.clock import FixedClock
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery
from meterline.services.aggregation import Aggregator

T0 = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z
LIMITS = Limits(10_000, 300_000_000, None)


class Timed:
    """Wraps a port: adds the seconds spent in one method to ``spent[label]``."""

    def __init__(self, inner: object, method: str, label: str, spent: dict[str, float]) -> None:
        self._inner, self._method, self._label, self._spent = inner, method, label, spent

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def timed(*args: object) -> object:
            started = time.perf_counter()
            try:
                return attr(*args)
            finally:
                self._spent[self._label] += time.perf_counter() - started

        return timed


def seed(b: EmbeddedBackend, events: int, subjects: int, spread: int = 0) -> float:
    """Appends ``events`` with UUIDv4 ids over ``subjects``; event times one hour before the
    clock, or (``spread`` seconds) rising evenly over the ``spread`` seconds before it."""
    started = time.perf_counter()
    for first in range(0, events, 1000):
        body = msgspec.json.encode(
            [
                {
                    "specversion": "1.0",
                    "id": str(uuid.uuid4()),
                    "source": "bench",
                    "type": "prompt",
                    "subject": f"cust-{i % subjects}",
                    "time": stamp(T0 - spread * 1_000_000 + i * spread * 1_000_000 // events)
                    if spread
                    else "2026-03-01T11:00:00Z",
                    "data": {"tokens": i % 97, "model": "abc"[i % 3]},
                }
                for i in range(first, min(first + 1000, events))
            ]
        )
        found = decode_events(split_body(body, "batch", 10_000), "default", T0, LIMITS)
        b.ledger.append("default", found).result()
    return time.perf_counter() - started


def stamp(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat()


def main() -> None:
    try:  # as `meterline serve` does (an older checkout run with PYTHONPATH=OLD/src has no such settings)
        from meterline.runtime.collector import tune_for_throughput

        tune_for_throughput()
    except ImportError:
        print("(this checkout has no garbage-collector settings: CPython's defaults)")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=20_000)
    parser.add_argument("--fsync", choices=["full", "normal"], default="full")
    parser.add_argument("--spread", type=int, default=0, help="event times over this many seconds (0: one minute)")
    parser.add_argument(
        "--gauge", action="store_true", help="the tokens meter as TIME_WEIGHTED_SUM instead of SUM (docs/gauges.md)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterline-aggregation-") as tmp:
        b = EmbeddedBackend(Path(tmp), IngestSettings(None, 1000), FixedClock(T0), fsync=args.fsync)
        try:
            spec = MeterSpec(
                slug="tokens",
                event_type="prompt",
                aggregation=Aggregation.TIME_WEIGHTED_SUM if args.gauge else Aggregation.SUM,
                value_property="$.tokens",
                group_by={"model": "$.model"},
            )
            b.meters.create("default", spec)
            b.meters.create("default", MeterSpec(slug="n", event_type="prompt", aggregation=Aggregation.COUNT))
            cpu = time.process_time()
            ingest_s = seed(b, args.events, args.subjects, args.spread)
            cpu = time.process_time() - cpu
            print(
                f"ack path (in-process appends of 1000 events): {args.events / ingest_s:,.0f} events/s,"
                f" {cpu / args.events * 1e6:.1f} us of CPU per event"
            )
            spent = {"read": 0.0, "apply": 0.0}
            ledger = Timed(b.ledger, "read", "read", spent)
            usage = Timed(b.usage, "apply", "apply", spent)
            aggregator = Aggregator(ledger, usage, cap=1000, chunk=args.chunk)  # type: ignore[arg-type]
            started, cpu = time.perf_counter(), time.process_time()
            aggregator.drain()
            total = time.perf_counter() - started
            cpu = time.process_time() - cpu
            replay = total - spent["read"] - spent["apply"]
            print(
                f"aggregator: {args.events:,} events in {total:.2f} s = {args.events / total:,.0f} events/s,"
                f" {cpu / args.events * 1e6:.1f} us of CPU per event (every thread of the process)"
            )
            for label, seconds in (
                ("read ledger", spent["read"]),
                ("replay + fold", replay),
                ("apply", spent["apply"]),
            ):
                print(f"  {label:<14} {seconds:6.2f} s  {seconds / args.events * 1e6:6.1f} us/event")
            rows = b.usage.query(b.meters.get("default", "n"), MeterQuery(start=0, end=T0 // 1_000_000 + 60))
            counted = sum(int(r.value) for r in rows)
            print(f"  check: COUNT from rollups {counted:,} = events {args.events:,}: {counted == args.events}")
        finally:
            b.close()


if __name__ == "__main__":
    main()
