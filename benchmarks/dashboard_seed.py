"""A realistic store for the dashboard benchmark, seeded fast through the real in-process path.

    ./run bench dashboard_seed --events 10000000 --data-dir DIR     # seeding alone

What it holds: ``--customers`` customers (keyed ``cust-0`` .. , or with ``--uuid-keys`` by
random UUIDv4-like keys as many real tenants key them; each claiming its own key as subject;
usage skewed as real customers are: a customer's share falls with its rank as 1/rank^0.8, so
rank 0 is the largest), three meters over three event types (``tokens`` SUM by model of
``prompt`` events, 60 %; ``api_calls`` COUNT by region of ``api_call`` events, 35 %;
``storage_gb`` MAX of ``storage`` readings, 5 %), UUIDv4 event ids (random bits from the seeded generator:
``os.urandom`` cost 90 µs a call on this machine) from several sources, and event
times rising over the 12 months 2025-03-01 .. 2026-03-01 UTC with jitter.

How: ``EmbeddedBackend`` (fsync normal: durability does not matter for a fixture; no
late-arrival limit, so the older months are accepted; a fixed clock at the end of the year),
events encoded, split and decoded by the ingest code and appended with ``backend.ledger.append``
in 1000-event batches (dedupe, ledger, hash chain: the ack path), and one ``Aggregator``
draining the ledger (rollups, summaries, ledger counts), as ``benchmarks/aggregation.py`` does;
the aggregator follows the appends on a thread of its own (as the server's does), then drains
what is left.
Invoices are made afterwards over HTTP by the benchmark (``invoices``): a plan, subscriptions
of the largest customers for the seeded year, and a billing run.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.domain.clock import FixedClock, to_us
from meterline.domain.customers.model import CustomerInput
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.events.model import Status
from meterline.domain.meters.model import parse_spec
from meterline.services.aggregation import Aggregator

NAMESPACE = "default"
SEED_FROM = datetime(2025, 3, 1, tzinfo=UTC)
SEED_TO = datetime(2026, 3, 1, tzinfo=UTC)
JANUARY = (to_us(datetime(2026, 1, 1, tzinfo=UTC)), to_us(datetime(2026, 2, 1, tzinfo=UTC)))
METERS: list[dict[str, Any]] = [
    {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
     "groupBy": {"model": "$.model"}},
    {"slug": "api_calls", "eventType": "api_call", "aggregation": "COUNT", "groupBy": {"region": "$.region"}},
    {"slug": "storage_gb", "eventType": "storage", "aggregation": "MAX", "valueProperty": "$.gb"},
]  # fmt: skip
MODELS = ("gpt-4o", "claude-3-5", "llama-3-70b", "mistral-large")
REGIONS = ("eu", "us", "ap")
SOURCES = ("api-gateway", "inference-eu", "inference-us", "storage-scanner")
BATCH = 1000
PLAN: dict[str, Any] = {
    "plan": "scale",
    "name": "Scale",
    "currency": "USD",
    "cards": [
        {"key": "platform", "name": "Platform fee", "model": {"model": "flat", "amount": "99"}},
        {"key": "tokens", "name": "Tokens", "meter": "tokens",
         "model": {"model": "graduated", "tiers": [{"upTo": "100000", "unitPrice": "0"}, {"unitPrice": "0.00002"}]}},
        {"key": "api", "name": "API calls", "meter": "api_calls", "model": {"model": "per_unit", "unitPrice": "0.001"}},
    ],
}  # fmt: skip


class Seeded(msgspec.Struct):
    """What the views must show, kept while seeding."""

    events: int
    customers: int
    largest: str
    """The customer with the most events (rank 0)."""
    largest_january_tokens: int
    largest_events: int
    uuid_keys: bool = False
    """Customers keyed by random UUIDv4-like keys instead of ``cust-<rank>``."""

    def key(self, rank: int) -> str:
        """The key (and subject) of the customer of this usage rank."""
        return customer_key(rank, self.uuid_keys)


def customer_key(rank: int, uuid_keys: bool) -> str:
    """``cust-<rank>``, or a UUIDv4-like key drawn from a generator seeded by the rank (the same
    key for the same rank in the seeder and in the benchmark)."""
    if not uuid_keys:
        return f"cust-{rank}"
    return str(uuid.UUID(bytes=random.Random(f"customer-{rank}").randbytes(16), version=4))


def _event(i: int, t_us: int, subject: str, rng: random.Random) -> dict[str, Any]:
    kind = rng.random()
    base = {
        "specversion": "1.0",
        "id": str(uuid.UUID(bytes=rng.randbytes(16), version=4)),
        "subject": subject,
        "time": datetime.fromtimestamp(t_us / 1e6, UTC).isoformat(),
    }
    if kind < 0.6:
        data = {"tokens": rng.randrange(1, 4000), "model": MODELS[i % 4]}
        return {**base, "source": SOURCES[1 + i % 2], "type": "prompt", "data": data}
    if kind < 0.95:
        return {**base, "source": SOURCES[0], "type": "api_call", "data": {"region": REGIONS[i % 3], "path": "/v1/x"}}
    return {**base, "source": SOURCES[3], "type": "storage", "data": {"gb": rng.randrange(1, 500)}}


def seed(data_dir: Path, n: int, customers: int = 5000, uuid_keys: bool = False) -> Seeded:
    """Seeds ``data_dir`` with ``n`` events and drains the aggregator; prints rates as it goes."""
    start_us, end_us = to_us(SEED_FROM), to_us(SEED_TO)
    clock = FixedClock(end_us)
    limits = Limits(max_events=BATCH, future_skew_us=300_000_000, late_window_us=None)
    backend = EmbeddedBackend(data_dir, IngestSettings(None, 1000), clock, fsync="normal")
    rng = random.Random(11)
    weights = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(customers)))
    january_tokens = largest_events = 0
    keys = [customer_key(c, uuid_keys) for c in range(customers)]
    try:
        for spec in METERS:
            backend.meters.create(NAMESPACE, parse_spec(spec))
        backend.customers.upsert_many(
            NAMESPACE,
            [CustomerInput(key=keys[c], name=f"Customer {c}", subject_keys=[keys[c]]) for c in range(customers)],
        )
        aggregator = Aggregator(backend.ledger, backend.usage, cap=1000, chunk=20_000)
        appending = threading.Event()
        appending.set()
        follower = threading.Thread(target=_follow, args=(aggregator, appending), daemon=True)
        follower.start()
        step = (end_us - start_us) / n
        started = time.perf_counter()
        next_report = started + 30
        pending = None
        for first in range(0, n, BATCH):
            count = min(BATCH, n - first)
            who = rng.choices(range(customers), cum_weights=weights, k=count)
            events = []
            for j in range(count):
                i = first + j
                t_us = start_us + int(i * step) + rng.randrange(0, max(1, int(step)))
                e = _event(i, t_us, keys[who[j]], rng)
                events.append(e)
                if who[j] == 0:
                    largest_events += 1
                    if e["type"] == "prompt" and JANUARY[0] <= t_us < JANUARY[1]:
                        january_tokens += e["data"]["tokens"]
            decoded = decode_events(split_body(msgspec.json.encode(events), "batch", BATCH), NAMESPACE, end_us, limits)
            if pending is not None:
                _check(pending.result())
            pending = backend.ledger.append(NAMESPACE, decoded)  # one in flight while the next is encoded
            now = time.perf_counter()
            if now >= next_report:
                done = first + count
                print(f"  appended {done:>11,} / {n:,}  ({done / (now - started):,.0f} events/s)", flush=True)
                next_report = now + 30
        if pending is not None:
            _check(pending.result())
        appended = time.perf_counter() - started
        print(f"ledger: {n:,} events in {appended:.0f} s = {n / appended:,.0f} events/s (1000-event appends)")
        appending.clear()
        follower.join()
        aggregator.drain()
        drained = time.perf_counter() - started
        print(f"aggregator: all {n:,} events aggregated {drained:.0f} s after the first append")
    finally:
        backend.close()
    seeded = Seeded(n, customers, keys[0], january_tokens, largest_events, uuid_keys)
    (data_dir / "seeded.json").write_bytes(msgspec.json.encode(seeded))
    return seeded


def _follow(aggregator: Aggregator, appending: threading.Event) -> None:
    """Drains the ledger as it grows until the appends are done (polling once a second when it
    has caught up: a benchmark's fixture, not the server's wake-up path)."""
    while appending.is_set():
        aggregator.drain()
        time.sleep(1)


def _check(outcomes: list[Any]) -> None:
    bad = [o for o in outcomes if o.status is not Status.ACCEPTED]
    if bad:
        sys.exit(f"seeding: {len(bad)} events not accepted, first: {bad[0]}")


def load(data_dir: Path) -> Seeded | None:
    path = data_dir / "seeded.json"
    return msgspec.json.decode(path.read_bytes(), type=Seeded) if path.exists() else None


def invoices(client: httpx.Client, subscribers: int = 200, uuid_keys: bool = False) -> int:
    """A plan, subscriptions of the ``subscribers`` largest customers for the seeded year and a
    billing run: finalized monthly invoices (12 per subscriber). Idempotent: a second call on
    the same store finds the plan and the windows billed. Returns the invoices made."""
    r = client.post("/api/v1/billing/plans", json=PLAN)
    if r.status_code not in (201, 409):
        sys.exit(f"plan: {r.status_code} {r.text[:300]}")
    published = client.post("/api/v1/billing/plans/scale/versions/1/publish", json={})
    if published.status_code not in (200, 409):  # 409: published already
        _ok(published)
    if not _ok(client.get("/api/v1/billing/subscriptions")):
        for c in range(subscribers):
            body = {"customer": customer_key(c, uuid_keys), "plan": "scale", "start": SEED_FROM.isoformat()}
            made = _ok(client.post("/api/v1/billing/subscriptions", json=body))
            _ok(client.post(f"/api/v1/billing/subscriptions/{made['id']}/cancel", json={"at": SEED_TO.isoformat()}))
    started = time.perf_counter()
    report = _ok(client.post("/api/v1/billing/runs", json={}))
    made = len(report.get("created", []))
    print(f"billing run: {made:,} invoices finalized in {time.perf_counter() - started:.0f} s")
    return made


def _ok(r: httpx.Response) -> Any:
    if r.status_code >= 300:
        sys.exit(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
    return r.json() if r.content else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--uuid-keys", action="store_true", help="key customers by random UUIDv4-like keys")
    parser.add_argument("--data-dir", type=Path, required=True, help="an empty or missing directory")
    args = parser.parse_args()
    if (args.data_dir / "seeded.json").exists():
        sys.exit(f"{args.data_dir} is seeded already")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    print(seed(args.data_dir, args.events, args.customers, args.uuid_keys))


if __name__ == "__main__":
    main()
