"""Erasure of one subject, in-process: how long it takes and how long ingest waits meanwhile.

    ./run bench erasure                      # 200,000 events over 30 days, 10 subjects: 20,000 to erase
    ./run bench erasure --events 1000000 --subjects 10 --spread-days 0   # all in one minute

Seeds the ledger through the real ingest path (``EmbeddedBackend``, 1000-event appends, UUIDv4
ids), aggregates it all, then erases ``cust-0`` while another thread appends one event at a time
(of another subject) as fast as it can. Prints the erasure's phases (prepare on a reader: scan,
chain check, erased forms; the small hour tasks; the last writer pass; the WAL truncation) and the ingest appends' wait
during it (the longest one is the stall the erasure's writer transaction causes). Checks the
COUNT total is unchanged and the entries of the subject are gone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import msgspec
from aggregation import LIMITS, T0, seed

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.domain.clock import FixedClock
from meterline.domain.erasure import ErasureRequest
from meterline.domain.events.decode import decode_events, split_body
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery
from meterline.services.aggregation import Aggregator


def count(b: EmbeddedBackend) -> int:
    rows = b.usage.query(b.meters.get("default", "n"), MeterQuery(start=0, end=T0 // 1_000_000 + 60))
    return sum(int(r.value) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--fsync", choices=["full", "normal"], default="full")
    parser.add_argument("--spread-days", type=int, default=30, help="event times over this many days (0: one minute)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterline-erasure-") as tmp:
        b = EmbeddedBackend(Path(tmp), IngestSettings(None, 1000), FixedClock(T0), fsync=args.fsync)
        try:
            spec = MeterSpec(slug="tokens", event_type="prompt", aggregation=Aggregation.SUM, value_property="$.tokens")
            b.meters.create("default", spec)
            b.meters.create("default", MeterSpec(slug="n", event_type="prompt", aggregation=Aggregation.COUNT))
            seed(b, args.events, args.subjects, args.spread_days * 86400)
            Aggregator(b.ledger, b.usage, cap=1000, chunk=20_000).drain()
            before = count(b)
            spent = {"passes": 0.0, "scrub": 0.0, "hours": 0.0}
            longest = {"pass": 0.0, "hours": 0.0}
            erasures = b.erasures
            apply, scrub, hours = erasures._apply, erasures._scrub, erasures._apply_hours

            def timed_hours(*a: object, **k: object) -> object:
                started = time.perf_counter()
                try:
                    return hours(*a, **k)  # type: ignore[arg-type]
                finally:
                    spent["hours"] += time.perf_counter() - started
                    longest["hours"] = max(longest["hours"], time.perf_counter() - started)

            def timed_apply(*a: object, **k: object) -> object:
                started = time.perf_counter()
                try:
                    return apply(*a, **k)  # type: ignore[arg-type]
                finally:
                    spent["passes"] += time.perf_counter() - started
                    longest["pass"] = max(longest["pass"], time.perf_counter() - started)

            def timed_scrub() -> None:
                started = time.perf_counter()
                scrub()
                spent["scrub"] += time.perf_counter() - started

            erasures._apply = timed_apply  # type: ignore[method-assign]
            erasures._scrub = timed_scrub  # type: ignore[method-assign]
            erasures._apply_hours = timed_hours  # type: ignore[method-assign]
            waits: list[float] = []
            stop = threading.Event()

            def ingest() -> None:
                while not stop.is_set():
                    body = msgspec.json.encode(
                        [
                            {
                                "specversion": "1.0",
                                "id": str(uuid.uuid4()),
                                "source": "probe",
                                "type": "other",
                                "subject": "probe",
                                "time": "2026-03-01T11:00:00Z",
                                "data": {},
                            }
                        ]
                    )
                    found = decode_events(split_body(body, "batch", 10), "default", T0, LIMITS)
                    started = time.perf_counter()
                    b.ledger.append("default", found).result()
                    waits.append(time.perf_counter() - started)

            probe = threading.Thread(target=ingest)
            probe.start()
            time.sleep(0.5)
            during_from = len(waits)
            started = time.perf_counter()
            record = erasures.erase(ErasureRequest("default", "cust-0", "benchmark", "bench"))
            total = time.perf_counter() - started
            during = waits[during_from:]
            stop.set()
            probe.join()
            baseline = waits[:during_from]
            entries = record.counts["ledgerEntries"]
            print(
                f"erased {entries:,} ledger entries of one subject ({args.events:,} in the ledger), fsync {args.fsync}"
            )
            prepare = total - spent["passes"] - spent["scrub"] - spent["hours"]
            print(f"  total {total:.2f} s: prepare (reader) {prepare:.2f} s,")
            print(f"  hour tasks {spent['hours']:.2f} s (longest {longest['hours']:.2f} s),")
            print(
                f"  last pass {spent['passes']:.2f} s (longest {longest['pass']:.2f} s),"
                f" WAL truncation {spent['scrub']:.2f} s"
            )
            print(
                f"  single-event appends meanwhile: {len(during):,}, median {statistics.median(during) * 1e3:.1f} ms,"
                f" longest {max(during) * 1e3:.0f} ms (before the erasure: median"
                f" {statistics.median(baseline) * 1e3:.1f} ms, longest {max(baseline) * 1e3:.0f} ms)"
            )
            after = count(b)  # the probe appends another type: `n` does not count it
            left = b.db.reader().execute("SELECT count(*) FROM events WHERE subject = 'cust-0'").fetchone()[0]
            print(f"  check: COUNT {after:,} = {before:,}: {after == before}; entries left with the subject: {left}")
            if after != before or left:
                sys.exit(1)
        finally:
            b.close()


if __name__ == "__main__":
    main()
