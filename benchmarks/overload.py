"""Overload: latency and memory of a real ``meterline serve`` under many concurrent big requests.

    ./run bench overload                                  # this checkout, 200 and 600 connections
    ./run bench overload --baseline OLD/src               # and an older checkout's src/, taking turns
    ./run bench overload --env METERLINE_SERVER__MAX_BODY_BYTES_IN_FLIGHT=8388608
    ./run bench overload --retry-after                    # wrk waits 1 s after each 503

For each connection count, each variant gets a fresh data directory and a fresh server (fsync
"full", the ingest benchmark's SUM meter with a groupBy) and wrk holds that many connections,
each posting 1000-event batches back to back for ``--duration`` seconds. Meanwhile:

- the server's resident memory (VmRSS) is sampled every 50 ms: peak during the load, and
  ``--settle`` seconds after it (does memory come back, or stay?);
- a probe client posts one 1000-event batch at a time, as a new client arriving during the
  overload would, and times each answer by status: how fast a refusal (503) comes, and how
  long an admitted request takes.

wrk's own figures cover every answer on its connections (204 and 503 together); by default a
refused connection retries at once (a hot loop), and wrk builds a fresh 1000-event body for
every attempt, on the same cores as the server (its CPU use is reported). Afterwards the ledger
is checked against what the server reports accepted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
from _common import Server, code_version, cpu_split, machine, percentile, start_meterline, thread_cpu
from ingest_http import METER, metrics, run_wrk, settle

from meterline.adapters.sqlite.database import DB_FILE

EVENTS = 1000
# With --retry-after, every 503 answer makes the next request of the same wrk thread wait the
# server's Retry-After (1 s): clients that back off as told (the SDK's sender does), instead of
# retrying in a hot loop.
HONOUR_RETRY_AFTER = r"""
local counted_response = response
local backoff = 0
function response(status, headers, body)
  if status == 503 then backoff = backoff + 1 end
  counted_response(status, headers, body)
end
function delay()
  if backoff > 0 then
    backoff = backoff - 1
    return 1000
  end
  return 0
end
"""


@dataclass
class Probe:
    """A client arriving during the overload: one request at a time, timed by status."""

    server: Server
    stop: threading.Event = field(default_factory=threading.Event)
    times: dict[int, list[float]] = field(default_factory=dict)
    errors: int = 0

    def run(self) -> None:
        n = 0
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                body = msgspec.json.encode(
                    [
                        {"specversion": "1.0", "id": f"probe-{n}-{i}", "source": "probe", "type": "prompt",
                         "subject": f"cust-{i % 1000}", "data": {"tokens": i % 97, "model": "gpt-4o"}}
                        for i in range(EVENTS)
                    ]
                )  # fmt: skip
                n += 1
                headers = {**self.server.headers, "Content-Type": "application/cloudevents-batch+json"}
                started = time.perf_counter()
                try:
                    r = client.post(f"{self.server.url}/api/v1/events", content=body, headers=headers)
                except httpx.HTTPError:
                    self.errors += 1
                    continue
                self.times.setdefault(r.status_code, []).append(time.perf_counter() - started)
                if r.status_code == 503:
                    self.stop.wait(0.2)


def children_cpu() -> float:
    """CPU seconds used so far by this process's finished children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Case:
    variant: str
    connections: int
    idle_mb: float = 0.0
    peak_mb: float = 0.0
    after_mb: float = 0.0
    wrk_204: int = 0
    wrk_other: int = 0
    socket_errors: int = 0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    events_per_s: float = 0.0
    backlog: int = 0
    server_cpu: float = 0.0
    wrk_cpu: float = 0.0
    probe: dict[int, list[float]] = field(default_factory=dict)
    probe_errors: int = 0
    first_other: str = ""
    consistent: bool = False


def run_case(variant: str, env: dict[str, str], connections: int, args: argparse.Namespace, work: Path) -> Case:
    data_dir = work / f"{variant}-{connections}"
    server = start_meterline(data_dir, work / f"{variant}-{connections}.log", env)
    case = Case(variant, connections)
    try:
        httpx.post(f"{server.url}/api/v1/meters", json=METER, headers=server.headers, timeout=30).raise_for_status()
        case.idle_mb = rss_mb(server.pid)
        peak, done = [case.idle_mb], threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak.append(rss_mb(server.pid))

        sampler, probe = threading.Thread(target=sample), Probe(server)
        prober = threading.Thread(target=probe.run)
        sampler.start()
        prober.start()
        before, cpu_before, wrk_before = metrics(server), thread_cpu(server.pid), children_cpu()
        try:
            lua = HONOUR_RETRY_AFTER if args.retry_after else ""
            r = run_wrk(server, work, EVENTS, connections, 1, args.duration, lua)
            during = metrics(server)  # accepted while the load ran (not the backlog drained after it)
            case.server_cpu = cpu_split(server.pid, cpu_before, thread_cpu(server.pid))[2] / r.seconds
            case.wrk_cpu = (children_cpu() - wrk_before) / r.seconds
        finally:
            probe.stop.set()
            prober.join(180)
            after = settle(server, timeout=120)
            time.sleep(args.settle)
            done.set()
            sampler.join()
        case.peak_mb, case.after_mb = max(peak), rss_mb(server.pid)
        accepted = during["meterline_events_total:accepted"] - before["meterline_events_total:accepted"]
        case.events_per_s = accepted / r.seconds
        case.backlog = int(after["meterline_events_total:accepted"] - during["meterline_events_total:accepted"])
        case.wrk_204, case.wrk_other, case.socket_errors = r.ok204, r.not204, r.socket_errors
        case.p50_ms, case.p90_ms, case.p99_ms, case.max_ms = r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
        case.probe, case.probe_errors, case.first_other = probe.times, probe.errors, r.first_bad
        case.consistent = converges(server, data_dir)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return case


def converges(server: Server, data_dir: Path, timeout: float = 120.0) -> bool:
    """Whether, once the last requests of the load are committed, the ledger holds exactly the
    events the server reports accepted (both only grow; they meet when the server is idle)."""
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
        ledger = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        conn.close()
        accepted = int(metrics(server)["meterline_events_total:accepted"])
        if ledger == accepted or time.monotonic() > deadline:
            if ledger != accepted:
                print(f"    ledger {ledger:,} events, accepted {accepted:,}")
            return bool(ledger == accepted)
        time.sleep(1)


def seconds(values: list[float], p: float) -> str:
    return f"{percentile(sorted(values), p):.2f}" if values else "-"


def report(cases: list[Case], args: argparse.Namespace) -> None:
    clients = "clients wait 1 s after a 503" if args.retry_after else "clients retry at once"
    print(f"\nResults ({args.duration} s per case, wrk -t1, {EVENTS} events per request, fsync full, {clients})")
    print(
        f"{'variant':<10}{'conns':>6}{'2xx':>7}{'503':>7}{'sockerr':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'events/s':>10}{'backlog':>9}{'cpu srv/wrk':>12}{'probe 503 p50/max s':>21}{'probe 2xx p50/max s':>21}"
        f"{'RSS idle':>9}{'peak':>7}{'after':>7}{'ledger':>8}"
    )
    for c in cases:
        p503, p2xx = c.probe.get(503, []), c.probe.get(204, [])
        print(
            f"{c.variant:<10}{c.connections:>6}{c.wrk_204:>7}{c.wrk_other:>7}{c.socket_errors:>8}{c.p50_ms:>9.0f}"
            f"{c.p99_ms:>9.0f}{c.max_ms:>9.0f}{c.events_per_s:>10,.0f}{c.backlog:>9,}"
            f"{f'{c.server_cpu:.2f}/{c.wrk_cpu:.2f}':>12}"
            f"{seconds(p503, 50) + ' / ' + seconds(p503, 100) + f' ({len(p503)})':>21}"
            f"{seconds(p2xx, 50) + ' / ' + seconds(p2xx, 100) + f' ({len(p2xx)})':>21}"
            f"{c.idle_mb:>9.0f}{c.peak_mb:>7.0f}{c.after_mb:>7.0f}{'ok' if c.consistent else 'MISMATCH':>8}"
        )
        if c.first_other:
            print(f"    first non-204 answer: {c.first_other[:160]}")
        if c.probe_errors:
            print(f"    probe transport errors: {c.probe_errors}")
    print(
        "\n  p50/p99/max: wrk, every answer on its connections. probe: one client sending one request at a"
        " time during the load (count in brackets). RSS in MB: idle after start, peak during the load,"
        f" {args.settle} s after it. events/s: accepted while the load ran; backlog: events accepted after it"
        " (requests still queued when wrk stopped). cpu: cores used by the server and by wrk during the load."
        " ledger: events in the ledger = accepted events reported."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds of load per case (default 30)")
    parser.add_argument("--connections", default="200,600", help="connection counts (default 200,600)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the load before the last RSS")
    parser.add_argument("--baseline", help="src/ directory of an older checkout, measured too (taking turns)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for this checkout's server")
    parser.add_argument("--retry-after", action="store_true", help="wrk waits 1 s after each 503 (Retry-After)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    print(f"machine: {machine()}")
    print(f"code: {code_version()}" + (f"; baseline: {args.baseline}" if args.baseline else ""))
    # an older server may not know this checkout's settings: --env applies to this checkout only
    variants = [("this", dict(kv.split("=", 1) for kv in args.env))]
    if args.baseline:
        variants.insert(0, ("baseline", {"PYTHONPATH": os.path.abspath(args.baseline)}))
    cases = []
    with tempfile.TemporaryDirectory(prefix="meterline-overload-") as tmp:
        for connections in (int(c) for c in args.connections.split(",")):
            for variant, env in variants:
                case = run_case(variant, env, connections, args, Path(tmp))
                cases.append(case)
                print(
                    f"  {variant:<9} {connections:>4} conns: 2xx {case.wrk_204}, other {case.wrk_other},"
                    f" p50 {case.p50_ms:.0f} ms, peak RSS {case.peak_mb:.0f} MB, after {case.after_mb:.0f} MB",
                    flush=True,
                )
    report(cases, args)


if __name__ == "__main__":
    main()
