"""Benchmark: one billing run for N customers x 5 metered lines (default 10,000 customers).

Seeds a temporary data directory in-process (5 SUM meters, N customers with 2 subjects each,
one published plan with a flat fee and 5 metered rate cards -- graduated, volume, package,
per-unit with a free allowance, per-unit with a cap -- one subscription per customer, and 2
events per customer and meter), moves the injected clock past the period end, then times
``BillingRuns.run`` -- usage reads, pricing, numbering, credits and the finalize transactions.
A second run is timed too (it must create nothing).

    .venv/bin/python benchmarks/billing_run.py [--customers 10000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.billing import subscription_row
from meterline.bootstrap import aggregator, billing_services, open_backend
from meterline.config import load_config
from meterline.domain.billing import Subscription, parse_plan
from meterline.domain.billing.records import StoredSubscription
from meterline.domain.clock import FixedClock, from_us
from meterline.domain.customers.model import CustomerInput
from meterline.domain.events.decode import Limits, decode_events
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.services.billing import Billing

NS = "default"
MARCH = 1_772_323_200_000_000  # 2026-03-01T00:00:00Z
APRIL = 1_775_001_600_000_000  # 2026-04-01T00:00:00Z
METERS = ("api_calls", "tokens", "storage_gb", "builds", "egress_gb")
PLAN = {
    "plan": "scale",
    "version": 1,
    "currency": "USD",
    "cards": [
        {"key": "platform", "name": "Platform", "model": {"model": "flat", "amount": "49"}},
        {"key": "api", "name": "API calls", "meter": "api_calls", "model": {"model": "graduated", "tiers": [
            {"upTo": "1000", "unitPrice": "0"}, {"upTo": "10000", "unitPrice": "0.002"}, {"unitPrice": "0.001"}]}},
        {"key": "tokens", "name": "Tokens", "meter": "tokens", "model": {"model": "volume", "tiers": [
            {"upTo": "5000", "unitPrice": "0.0004", "flatFee": "1"}, {"unitPrice": "0.0003"}]}},
        {"key": "storage", "name": "Storage", "meter": "storage_gb", "freeUnits": "5",
         "model": {"model": "per_unit", "unitPrice": "0.023"}},
        {"key": "builds", "name": "Builds", "meter": "builds", "model": {
            "model": "package", "packageSize": "100", "packagePrice": "2.5"}},
        {"key": "egress", "name": "Egress", "meter": "egress_gb", "maximum": "40",
         "model": {"model": "per_unit", "unitPrice": "0.09"}},
    ],
}  # fmt: skip


def seed(backend: EmbeddedBackend, billing: Billing, customers: int) -> int:
    for slug in METERS:
        backend.meters.create(NS, MeterSpec(slug, slug, Aggregation.SUM, value_property="$.v"))
    inputs = [CustomerInput(f"c{i:05d}", f"Customer {i}", [f"c{i:05d}", f"c{i:05d}-b"]) for i in range(customers)]
    saved = backend.db.writer.call(lambda conn: [backend.customers._save(conn, NS, inp, None) for inp in inputs])
    billing.plans.create(NS, parse_plan(PLAN), auto_version=False)
    billing.plans.publish(NS, "scale", 1)
    start = from_us(MARCH)
    subs = [
        StoredSubscription(f"s{i:05d}", NS, s.customer.id, Subscription(s.customer.key, "scale", 1, start, "UTC"),
                           MARCH, None, MARCH)
        for i, s in enumerate(saved)
    ]  # fmt: skip
    backend.db.writer.call(
        lambda conn: conn.executemany(
            "INSERT INTO subscriptions (id, namespace, customer, body, billed_through_us, previous, created_us,"
            " start_us, end_us) VALUES (?,?,?,?,?,?,?,?,NULL)",
            [(*subscription_row(s), MARCH) for s in subs],
        )
    )
    return ingest(backend, customers)


def ingest(backend: EmbeddedBackend, customers: int) -> int:
    limits = Limits(10_000, 300_000_000, None)
    events = []
    for i in range(customers):
        for m, slug in enumerate(METERS):
            for k, subject in enumerate((f"c{i:05d}", f"c{i:05d}-b")):
                t = from_us(MARCH + ((i * 7 + m * 3 + k * 11) % 700) * 3_600_000_000).isoformat()
                value = (i * 37 + m * 1013 + k * 17) % 9000 + 1
                events.append({"specversion": "1.0", "id": f"{i}-{m}-{k}", "source": "bench", "type": slug,
                               "subject": subject, "time": t, "data": {"v": value}})  # fmt: skip
    raws = [msgspec.Raw(msgspec.json.encode(e)) for e in events]
    futures = []
    for start in range(0, len(raws), 2000):
        candidates = decode_events(raws[start : start + 2000], NS, APRIL, limits)
        futures.append(backend.ledger.append(NS, candidates))
    for f in futures:
        f.result()
    return len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true", help="print the 25 hottest functions of the run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterline-billing-bench-") as tmp:
        clock = FixedClock(APRIL + 60_000_000)
        config = load_config(None, {"storage": {"data_dir": Path(tmp), "fsync": "normal"}})
        backend = open_backend(config, clock)
        try:
            billing = billing_services(config, backend, clock)
            t0 = time.perf_counter()
            events = seed(backend, billing, args.customers)
            seeded = time.perf_counter() - t0
            aggregator(config, backend).drain()  # the rollups billing reads, as the server's aggregator keeps them
            runs = billing.runs
            profiler = cProfile.Profile() if args.profile else None
            t1 = time.perf_counter()
            if profiler:
                profiler.enable()
            report = runs.run(NS)
            if profiler:
                profiler.disable()
            elapsed = time.perf_counter() - t1
            t2 = time.perf_counter()
            again = runs.run(NS)
            rerun = time.perf_counter() - t2
        finally:
            backend.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = len(METERS)
    print(f"seeded {args.customers} customers x {lines} metered lines, {events} events in {seeded:.1f} s")
    print(f"billing run: {len(report.created)} invoices finalized in {elapsed:.2f} s "
          f"({len(report.created) / elapsed:,.0f} invoices/s), failed {len(report.failed)}")  # fmt: skip
    print(f"second run: {len(again.created)} created in {rerun:.2f} s")
    print(f"peak RSS: {rss_mb:.0f} MiB (whole process, seeding included)")
    if profiler:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
