"""The client SDK: the caller's cost per ``record()`` and the throughput to a real server.

1. ``record()`` alone (no server reachable, so nothing is sent and the sender thread only
   retries): the time per call for the memory queue and for the spool with each fsync policy.
   That is what a producer's request path pays.
2. Throughput: N events recorded as fast as one thread can into a client pointed at a real
   ``meterline serve`` (fsync full), until the server acknowledged all of them; with the memory
   queue and with the spool (fsync ``interval``). Events per second from the first ``record``
   to the last acknowledgement, and the server's count checked against N.

    .venv/bin/python benchmarks/client.py --events 200000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
from _common import code_version, free_port, machine, start_meterline

from meterline.client import Client, ClientOptions


def per_record(label: str, options: ClientOptions, n: int) -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", "k", options)  # nothing listens: nothing is sent
    client.record("bench", "acme", {"n": 0})  # start the thread and open the spool outside the timing
    started = time.perf_counter()
    for i in range(n):
        client.record("bench", "acme", {"n": i, "model": "large"})
    elapsed = time.perf_counter() - started
    stats = client.stats
    client.close(timeout=0)
    print(f"record() {label:28s} {elapsed / n * 1e6:7.2f} µs/call  ({n / elapsed:9.0f} calls/s, kept {stats.recorded})")


def throughput(label: str, url: str, key: str, options: ClientOptions, n: int, kind: str) -> None:
    started = time.perf_counter()
    with Client(url, key, options) as client:
        for _ in range(n):
            client.record(kind, "acme", {"n": 1})
        recorded = time.perf_counter() - started
        assert client.flush(600), "not delivered in 10 minutes"
        elapsed = time.perf_counter() - started
        stats = client.stats
    assert stats.sent == n and stats.dropped == 0, stats
    query = httpx.get(f"{url}/api/v1/meters/{kind}/query", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    total = sum(int(row["value"]) for row in query.json()["data"])
    assert total == n, (total, n)
    print(
        f"to a server {label:24s} {n / elapsed:9.0f} events/s delivered (recording took {recorded:.2f} s,"
        f" all acknowledged after {elapsed:.2f} s; {stats.retries} retries; server counts {total})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{machine()}\ncode {code_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_record("memory queue", ClientOptions(max_queue=args.calls * 2), args.calls)
        for policy in ("never", "interval", "always"):
            calls = args.calls if policy != "always" else max(1000, args.calls // 50)
            per_record(
                f"spool, fsync {policy}", ClientOptions(spool_dir=root / f"spool-{policy}", spool_fsync=policy), calls
            )
        server = start_meterline(root / "data", root / "server.log")
        try:
            for kind in ("mem", "spool"):
                spec = {"slug": kind, "eventType": kind, "aggregation": "COUNT"}
                httpx.post(f"{server.url}/api/v1/meters", json=spec, headers=server.headers).raise_for_status()
            throughput("memory queue", server.url, server.key, ClientOptions(max_queue=args.events), args.events, "mem")
            spooled = ClientOptions(spool_dir=root / "spool-run")
            throughput("spool, fsync interval", server.url, server.key, spooled, args.events, "spool")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
