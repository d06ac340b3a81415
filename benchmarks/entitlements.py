"""Entitlement checks (in-process and over HTTP) and ingest with live entitlements and alert rules.

    ./run bench entitlements [--duration 10] [--cases 1:64,100:16] [--checks 200000] [--rounds 2]

1. Ingest throughput of a real ``meterline serve`` (fsync full, wrk, unique ids, 1000 distinct
   customers as in ingest_http) on two servers taking turns case by case (``--rounds``): a
   plain one, and one with 1000 customers, each with a metered entitlement on the ingested
   meter, plus a LOG channel and 100 threshold rules (4 thresholds each) on that feature, so
   every event moves a live counter and is evaluated against 100 rules.
2. The check over HTTP: wrk with one connection POSTing ``/api/v1/entitlements/check`` for one
   feature (p50/p99 from wrk's latency histogram).
3. The check in-process: the same data directory opened in this process, timing
   ``LiveCounters.check`` call by call (perf_counter_ns) over ``--checks`` calls spread over
   the 1000 customers.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
from _common import Server, code_version, machine, percentile, start_meterline
from ingest_http import METER, Result, metrics, run_wrk, settle

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.bootstrap import attach_counting
from meterline.domain.clock import SystemClock

CUSTOMERS = 1000
RULES = 100

CHECK_LUA = r"""
wrk.method = "POST"
wrk.path = "/api/v1/entitlements/check"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __KEY__"
wrk.body = '{"customer":"cust-7","features":[{"feature":"tokens","quantity":1}]}'
function response(status, headers, body)
  if status ~= 200 then io.write("BAD " .. status .. "\n") end
end
function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d p50=%d p90=%d p99=%d max=%d\n", summary.requests,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def provision(server: Server) -> None:
    """1000 customers with a metered entitlement each, a LOG channel and 100 threshold rules."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as c:
        c.post("/api/v1/features", json={"key": "tokens", "name": "Tokens", "meterSlug": "tokens"}).raise_for_status()
        for i in range(CUSTOMERS):
            c.post("/api/v1/customers", json={"key": f"cust-{i}"}).raise_for_status()
            c.post(
                f"/api/v1/customers/cust-{i}/entitlements",
                json={
                    "type": "metered",
                    "featureKey": "tokens",
                    "issueAfterReset": 10**12,
                    "usagePeriod": {"interval": "MONTH"},
                },
            ).raise_for_status()
        channel = c.post("/api/v1/notification/channels", json={"type": "LOG", "name": "log"}).json()["id"]
        for r in range(RULES):
            c.post(
                "/api/v1/notification/rules",
                json={
                    "type": "entitlements.balance.threshold",
                    "name": f"r{r}",
                    "channels": [channel],
                    "features": ["tokens"],
                    "thresholds": [{"type": "PERCENT", "value": v} for v in (50, 80, 95, 100)],
                },
            ).raise_for_status()


def ingest(server: Server, work: Path, cases: list[tuple[int, int]], duration: int) -> list[Result]:
    out = []
    for batch, connections in cases:
        before = metrics(server)
        r = run_wrk(server, work, batch, connections, 1, duration)
        after = settle(server)
        r.accepted = int(after["meterline_events_total:accepted"] - before["meterline_events_total:accepted"])
        out.append(r)
        print(
            f"  {server.name:<22} {batch:>4} ev/req x {connections:>3} conns: {r.rps:>8,.0f} req/s"
            f" {r.eps:>9,.0f} ev/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  non-204 {r.not204}",
            flush=True,
        )
        time.sleep(1)
    return out


def http_check(server: Server, work: Path, duration: int) -> dict[str, float]:
    script = work / "check.lua"
    script.write_text(CHECK_LUA.replace("__KEY__", server.key or ""))
    cmd = ["wrk", "-t1", "-c1", f"-d{duration}s", "--latency", "-s", str(script), f"{server.url}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    if "BAD" in out:
        raise RuntimeError(out)
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    v = {k: int(x) for k, x in (f.split("=") for f in line.split()[1:])}
    return {
        "requests_per_s": v["requests"] / duration,
        "p50_ms": v["p50"] / 1000,
        "p90_ms": v["p90"] / 1000,
        "p99_ms": v["p99"] / 1000,
        "max_ms": v["max"] / 1000,
    }


def inprocess_check(data_dir: Path, calls: int) -> dict[str, float]:
    backend = EmbeddedBackend(data_dir, IngestSettings(None, 1000), SystemClock())
    try:
        counters = attach_counting(backend, SystemClock()).counters
        one = Decimal(1)
        keys = [f"cust-{i}" for i in range(CUSTOMERS)]
        for k in keys:  # warm: every counter rolled once
            counters.check("default", k, "tokens", one)
        samples = []
        clock = time.perf_counter_ns
        check = counters.check
        for n in range(calls):
            k = keys[n % CUSTOMERS]
            t0 = clock()
            check("default", k, "tokens", one)
            samples.append(clock() - t0)
        samples.sort()
        return {
            "calls": calls,
            "mean_us": sum(samples) / len(samples) / 1000,
            "p50_us": percentile(samples, 50) / 1000,
            "p99_us": percentile(samples, 99) / 1000,
        }
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--cases", default="1:64,100:16", help="events-per-request:connections,...")
    parser.add_argument("--checks", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2, help="ingest rounds per server, taking turns")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    cases = [(int(b), int(c)) for b, c in (x.split(":") for x in args.cases.split(","))]
    print(f"machine: {machine()}\ncode: {code_version()}")
    with tempfile.TemporaryDirectory(prefix="meterline-bench-") as tmp:
        work = Path(tmp)
        servers: dict[str, Server] = {}
        try:
            for name in ("plain", "entitlements+rules"):
                servers[name] = start_meterline(work / name, work / f"{name}.log")
                servers[name].name = name
                httpx.post(
                    f"{servers[name].url}/api/v1/meters", json=METER, headers=servers[name].headers
                ).raise_for_status()
            started = time.perf_counter()
            provision(servers["entitlements+rules"])
            print(f"  provisioned {CUSTOMERS} entitlements and {RULES} rules in {time.perf_counter() - started:.1f} s")
            # The two servers take turns, case by case and round by round, so a drift in the
            # machine's speed hits both alike.
            results: dict[str, list[list[Result]]] = {"plain": [], "entitlements+rules": []}
            for _ in range(args.rounds):
                for name, server in servers.items():
                    results[name].append(ingest(server, work, cases, args.duration))
            h = http_check(servers["entitlements+rules"], work, args.duration)
            print(
                f"  check over HTTP (1 connection): {h['requests_per_s']:,.0f} req/s, p50 {h['p50_ms']:.2f} ms,"
                f" p90 {h['p90_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms, max {h['max_ms']:.2f} ms"
            )
        finally:
            for server in servers.values():
                server.stop()
        p = inprocess_check(work / "entitlements+rules", args.checks)
        print(
            f"  check in-process ({p['calls']:,} calls): mean {p['mean_us']:.2f} us, p50 {p['p50_us']:.2f} us,"
            f" p99 {p['p99_us']:.2f} us"
        )
        print(f"\ningest with 1000 entitlements + 100 rules against plain (mean of {args.rounds} rounds):")
        for i, (batch, _) in enumerate(cases):
            plain = sum(r[i].eps for r in results["plain"]) / args.rounds
            loaded = sum(r[i].eps for r in results["entitlements+rules"]) / args.rounds
            print(
                f"  {batch:>4} ev/req: {plain:,.0f} -> {loaded:,.0f} ev/s ({(1 - loaded / plain) * 100:+.1f}% slower)"
            )


if __name__ == "__main__":
    main()
