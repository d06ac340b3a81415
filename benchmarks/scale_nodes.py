"""Scale mode through real API nodes: events/s over HTTP with 1 API node + 1 sink worker and
with 2 + 2, and the lag from an ingest's 2xx to the moment a query counts it.

    ./run bench scale_nodes [--events 20000] [--batch 500] [--senders 4]

Starts its own stack (docs/scale.md) on free 127.0.0.1 ports and stops it at the end. For each
shape (1+1, then 2+2), in a site of its own (topic with 4 partitions, ClickHouse database,
PostgreSQL schema):

1. starts the workers and the `meterline serve` nodes (`tests/scale_site.py`);
2. ``--senders`` threads post ``--batch``-event requests round-robin over the nodes until
   ``--events`` are acknowledged (each a 2xx with every event accepted): **ack events/s**;
3. polls a COUNT meter (``consistency=eventual``) until it counts them all: **end-to-end
   events/s** (from the first request to the last event counted);
4. 20 single requests of 100 events, one at a time: for each, the time from its 2xx to the
   moment an eventual-consistency query counts it (polled every 10 ms): **ack-to-queryable lag**.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import percentile  # noqa: E402
from scale_site import site  # noqa: E402
from stack import launch  # noqa: E402

EXTRA = """
[aggregation]
chunk = 20000
[billing]
scheduler_enabled = false

[[meters]]
slug = "prompts"
event_type = "prompt"
aggregation = "COUNT"
"""


def free_port() -> int:
    return launch.free_port()


def body(run: str, first: int, n: int, minute: str) -> bytes:
    return msgspec.json.encode(
        [
            {"specversion": "1.0", "id": f"{run}-{i}", "source": "bench", "type": "prompt",
             "subject": f"c{i % 1000}", "time": minute, "data": {"tokens": i % 97}}
            for i in range(first, first + n)
        ]
    )  # fmt: skip


def counted(url: str, key: str) -> int:
    params = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "consistency": "eventual"}
    r = httpx.get(f"{url}/api/v1/meters/prompts/query", params=params, headers={"Authorization": f"Bearer {key}"})
    r.raise_for_status()
    return int(sum(row["value"] for row in r.json()["data"]))


def shape(stack: launch.Stack, root: Path, nodes: int, workers: int, args: argparse.Namespace) -> dict[str, float]:
    with site(stack, root, partitions=4, extra=EXTRA) as s:
        for _ in range(workers):
            s.worker()
        urls = []
        for _ in range(nodes):
            port = free_port()
            s.node(port)
            urls.append(f"http://127.0.0.1:{port}")
        key = s.key("default")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/cloudevents-batch+json"}
        minute = datetime.now(UTC).replace(second=0, microsecond=0).isoformat().replace("+00:00", "Z")
        run = uuid.uuid4().hex[:8]
        batches = args.events // args.batch
        next_batch = itertools.count()
        lock = threading.Lock()

        def sender(n: int) -> None:
            with httpx.Client(timeout=120) as client:
                while True:
                    with lock:
                        b = next(next_batch)
                    if b >= batches:
                        return
                    url = urls[b % len(urls)]
                    r = client.post(f"{url}/api/v1/events", content=body(run, b * args.batch, args.batch, minute),
                                    headers=headers)  # fmt: skip
                    assert r.status_code == 204, r.text

        started = time.perf_counter()
        threads = [threading.Thread(target=sender, args=(n,)) for n in range(args.senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        acked = time.perf_counter() - started
        total = batches * args.batch
        while counted(urls[0], key) < total:
            time.sleep(0.05)
        done = time.perf_counter() - started
        assert counted(urls[0], key) == total
        lags = []
        for i in range(20):
            first = total + i * 100
            r = httpx.post(f"{urls[i % len(urls)]}/api/v1/events", content=body(run, first, 100, minute),
                           headers=headers, timeout=60)  # fmt: skip
            assert r.status_code == 204, r.text
            t0 = time.perf_counter()
            while counted(urls[0], key) < first + 100:
                time.sleep(0.01)
            lags.append(time.perf_counter() - t0)
        lags.sort()
        return {"ack_eps": total / acked, "e2e_eps": total / done, "lag_p50": percentile(lags, 50),
                "lag_p95": percentile(lags, 95)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = launch.up(Path(tmp) / "engines")
        try:
            for nodes, workers in ((1, 1), (2, 2)):
                r = shape(stack, Path(tmp) / f"site-{nodes}x{workers}", nodes, workers, args)
                print(
                    f"{nodes} API node(s) + {workers} worker(s): ack {r['ack_eps']:,.0f} events/s,"
                    f" end to end {r['e2e_eps']:,.0f} events/s; ack-to-queryable lag"
                    f" p50 {r['lag_p50'] * 1000:.0f} ms, p95 {r['lag_p95'] * 1000:.0f} ms",
                    flush=True,
                )
        finally:
            launch.down(Path(tmp) / "engines")


if __name__ == "__main__":
    main()
