"""Query latency for a dense month, in-process: one customer with a reading in every hour of
January 2026 for 3 models (2,232 hourly rollup rows), seeded through the real ingest path.

    ./run bench query_dense

Prints p50/p99 of 200 queries (after 20 warm-up) for the month total and for DAY windows in
America/New_York. This is the worst case per customer-month for the rollup layout: every hour
bucket holds data for every group.
"""

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.domain.clock import FixedClock
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery
from meterline.domain.meters.windows import WindowSize
from meterline.services.aggregation import Aggregator

d = Path(tempfile.mkdtemp())
start = datetime(2026, 1, 1, tzinfo=UTC)
clock = FixedClock(int(datetime(2026, 2, 2, tzinfo=UTC).timestamp()) * 1_000_000)
b = EmbeddedBackend(d, IngestSettings(None, 1000), clock, fsync="normal")
m = b.meters.create(
    "default",
    MeterSpec(
        slug="t", event_type="p", aggregation=Aggregation.SUM, value_property="$.v", group_by={"model": "$.model"}
    ),
)
evs = [
    {
        "specversion": "1.0",
        "id": f"{h}-{k}",
        "source": "s",
        "type": "p",
        "subject": "c",
        "time": (start + timedelta(hours=h, minutes=k)).isoformat(),
        "data": {"v": h + k, "model": "abc"[k]},
    }
    for h in range(744)
    for k in range(3)
]
for i in range(0, len(evs), 1000):
    body = msgspec.json.encode(evs[i : i + 1000])
    b.ledger.append(
        "default",
        decode_events(split_body(body, "batch", 10000), "default", clock.now_us(), Limits(10000, 300_000_000, None)),
    ).result()
Aggregator(b.ledger, b.usage, cap=1000).drain()  # the rollups, as the server's aggregator keeps them
s, e = int(start.timestamp()), int(datetime(2026, 2, 1, tzinfo=UTC).timestamp())
for label, q in [
    ("month total", MeterQuery(start=s, end=e, subjects=("c",))),
    (
        "by DAY New York",
        MeterQuery(start=s, end=e, subjects=("c",), window_size=WindowSize.DAY, tz=ZoneInfo("America/New_York")),
    ),
]:
    for _ in range(20):
        b.meters.query(m, q)
    ts = []
    for _ in range(200):
        t = time.perf_counter()
        rows = b.meters.query(m, q)
        ts.append(time.perf_counter() - t)
    ts.sort()
    print(f"{label}: p50 {ts[100] * 1000:.3f} ms  p99 {ts[198] * 1000:.3f} ms  rows {len(rows)}")
b.close()
