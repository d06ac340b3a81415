"""HTTP ingest throughput of a real ``meterline serve`` process, next to its no-op ceiling.

    ./run bench ingest_http [--duration 10] [--cases 1:64,100:16,1000:8] [--threads 1] [--rounds 1]
                            [--ids random|sequential] [--customers 10000] [--baseline OLD/src]

For each case (events per request : connections) wrk posts CloudEvents batches for
``--duration`` seconds to each server in turn: the no-op ceiling (benchmarks/noop_app.py:
meterline's own server whose ledger stores nothing), then meterline. With ``--baseline`` the
same two run from another checkout's ``src/`` first (last in odd-numbered rounds, so each runs
first equally often with an even ``--rounds``), so before and after are measured side by side in
one run. Every event has a fresh UUIDv4 id (or, with ``--ids sequential``, a run
prefix + counter) and a random one of ``--customers`` subjects, so every event is accepted.
Before the load a SUM meter with a groupBy is created, so each event goes through dedupe,
meter evaluation, the ledger and the rollups, with the default fsync "full" (an answer means
the events are synced to disk).

Afterwards the figures are checked against each storing server: accepted events (from
/metrics) against what wrk saw answered and against the ledger, the writer's commits, and
the meter's SUM from the query API against a sum recomputed from the ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import Server, code_version, cpu_split, machine, start_meterline, start_noop, thread_cpu

from meterline.adapters.sqlite.database import DB_FILE

METER = {
    "slug": "tokens",
    "eventType": "prompt",
    "aggregation": "SUM",
    "valueProperty": "$.tokens",
    "groupBy": {"model": "$.model"},
}

# Bodies are built per request inside wrk: a per-run, per-thread prefix plus a counter makes
# every event id unique. Each thread counts 204 answers and anything else (with the first
# unexpected answer kept for the report); done() prints one RESULT line for Python to parse.
LUA = r"""
local batch = __BATCH__
local run = "__RUN__"
local random_ids = __RANDOM__
local customers = __CUSTOMERS__
local models = {"gpt-4o", "claude-3-5", "llama-3-70b"}
local threads = {}

wrk.method = "POST"
wrk.path = "/api/v1/events"
wrk.headers["Content-Type"] = "application/cloudevents-batch+json"
wrk.headers["Authorization"] = "Bearer __KEY__"

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix = run .. "-t" .. tid .. "-"
  math.randomseed(__SEED__ + tid * 7919)
  counter = 0
  sent = 0
  ok204 = 0
  not204 = 0
  first_bad = ""
end

local function uuid4()
  -- UUIDv4 from 16-bit draws (LuaJIT formats only 32-bit integers exactly)
  local r = math.random
  return string.format("%04x%04x-%04x-4%03x-%04x-%04x%04x%04x", r(0, 65535), r(0, 65535), r(0, 65535),
    r(0, 4095), 32768 + r(0, 16383), r(0, 65535), r(0, 65535), r(0, 65535))
end

function request()
  local parts = {}
  for i = 1, batch do
    counter = counter + 1
    local n = counter
    local id = random_ids and uuid4() or prefix .. n
    local customer = random_ids and math.random(0, customers - 1) or n % customers
    parts[i] = string.format(
      '{"specversion":"1.0","id":"%s","source":"wrk","type":"prompt","subject":"cust-%d",'
      .. '"data":{"tokens":%d,"model":"%s"}}',
      id, customer, n % 97, models[n % 3 + 1])
  end
  sent = sent + 1
  return wrk.format(nil, nil, nil, "[" .. table.concat(parts, ",") .. "]")
end

function response(status, headers, body)
  if status == 204 then
    ok204 = ok204 + 1
  else
    not204 = not204 + 1
    if first_bad == "" then
      first_bad = status .. " " .. string.sub(body or "", 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local sent_total, ok, bad, bad_text = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    sent_total = sent_total + t:get("sent")
    ok = ok + t:get("ok204")
    bad = bad + t:get("not204")
    if bad_text == "" then bad_text = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT duration_us=%d requests=%d sent=%d ok204=%d not204=%d connect=%d read=%d write=%d status=%d"
    .. " timeout=%d p50=%d p90=%d p99=%d max=%d mean=%d\n",
    summary.duration, summary.requests, sent_total, ok, bad, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
  if bad_text ~= "" then io.write("FIRST_BAD " .. bad_text:gsub("\n", " ") .. "\n") end
end
"""


@dataclass
class Result:
    server: str
    batch: int
    connections: int
    seconds: float
    requests: int
    sent: int
    ok204: int
    not204: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_main: float = 0.0
    cpu_other: float = 0.0
    cpu_total: float = 0.0
    accepted: int = 0
    commits: int = 0
    lag_at_end: int | None = None
    """Events the aggregator had not applied when the load stopped (None: no separate aggregator)."""
    drain_s: float | None = None
    """Seconds from the end of the load until the rollup lag was 0."""
    aggregated: int | None = None
    """Events the aggregator applied during the load and the drain."""
    first_bad: str = ""
    raw: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def eps(self) -> float:
        return self.requests * self.batch / self.seconds


def run_wrk(
    server: Server,
    work: Path,
    batch: int,
    connections: int,
    threads: int,
    duration: int,
    extra_lua: str = "",
    ids: str = "sequential",
    customers: int = 1000,
) -> Result:
    """``extra_lua`` is appended to the script (it may wrap ``response`` or add ``delay``).
    ``ids``: ``sequential`` (run prefix + counter, subject ``cust-<n % customers>``) or ``random``
    (UUIDv4 ids, a random subject of ``customers``)."""
    run_id = f"{server.name.replace(' ', '_')}-b{batch}-{time.time_ns()}"
    script = work / f"{run_id}.lua"
    fill = {
        "__BATCH__": str(batch),
        "__RUN__": run_id,
        "__KEY__": server.key or "none",
        "__RANDOM__": "true" if ids == "random" else "false",
        "__CUSTOMERS__": str(customers),
        "__SEED__": str(random.randrange(1, 2**31)),
    }
    script.write_text(re.sub("__[A-Z]+__", lambda m: fill[m.group(0)], LUA) + extra_lua)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        f"{server.url}/api/v1/events",
    ]
    before = thread_cpu(server.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    after = thread_cpu(server.pid)
    if out.returncode != 0 or "RESULT" not in out.stdout:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    v = {k: int(x) for k, x in (f.split("=") for f in line.split()[1:])}
    bad = next((x[len("FIRST_BAD ") :] for x in out.stdout.splitlines() if x.startswith("FIRST_BAD ")), "")
    main, other, total = cpu_split(server.pid, before, after)
    return Result(
        server=server.name,
        batch=batch,
        connections=connections,
        seconds=v["duration_us"] / 1e6,
        requests=v["requests"],
        sent=v["sent"],
        ok204=v["ok204"],
        not204=v["not204"],
        socket_errors=v["connect"] + v["read"] + v["write"] + v["timeout"],
        p50_ms=v["p50"] / 1000,
        p90_ms=v["p90"] / 1000,
        p99_ms=v["p99"] / 1000,
        max_ms=v["max"] / 1000,
        cpu_main=main,
        cpu_other=other,
        cpu_total=total,
        first_bad=bad,
        raw=out.stdout,
    )


_METRIC = re.compile(r'^(meterline_[a-z_]+)(?:\{outcome="([a-z]+)"\})? ([0-9.e+]+)$', re.M)


def metrics(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {f"{name}:{label}" if label else name: float(v) for name, label, v in _METRIC.findall(text)}


def settle(server: Server, timeout: float = 30.0) -> dict[str, float]:
    """Metrics once in-flight requests cut off by wrk's stop have been answered (stable twice)."""
    last: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = metrics(server)
        if m.get("meterline_events_total:accepted") == last.get("meterline_events_total:accepted"):
            return m
        last = m
        time.sleep(0.5)
    return last


def verify(server: Server, data_dir: Path) -> None:
    """The query API's SUM and count against the ledger itself."""
    r = httpx.get(f"{server.url}/api/v1/meters/tokens/query", headers=server.headers, timeout=60)
    r.raise_for_status()
    api_sum = sum(float(row["value"]) for row in r.json()["data"])
    m = metrics(server)
    conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    ledger_n, ledger_sum = conn.execute(
        "SELECT count(*), coalesce(sum(raw ->> '$.data.tokens'), 0) FROM events WHERE type = 'prompt'"
    ).fetchone()
    dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    conn.close()
    accepted = int(m.get("meterline_events_total:accepted", 0))
    duplicates, rejected = (
        int(m.get("meterline_events_total:duplicate", 0)),
        int(m.get("meterline_events_total:rejected", 0)),
    )
    ok = accepted == ledger_n and int(api_sum) == ledger_sum and duplicates == rejected == dead == 0
    print(
        f"  {server.name:<11} accepted {accepted:,} = ledger {ledger_n:,}; duplicates {duplicates}, rejected"
        f" {rejected}, dead letters {dead}; SUM(tokens) ledger {ledger_sum:,} / query API {api_sum:,.0f}"
        f" => {'consistent' if ok else 'MISMATCH'}"
    )


def report(results: list[Result], duration: int, threads: int, args: argparse.Namespace) -> None:
    print(f"\nResults (wrk, 127.0.0.1, fsync={args.fsync}, {args.ids} ids, {args.customers} customers)")
    head = (
        f"{'server':<12}{'ev/req':>7}{'conns':>6}{'req/s':>10}{'events/s':>11}{'p50 ms':>8}{'p90 ms':>8}"
        f"{'p99 ms':>8}{'max ms':>8}{'2xx':>9}{'non-2xx':>8}{'sockerr':>8}{'cpu':>6}{'main':>6}{'other':>6}"
        f"{'commits':>9}{'req/commit':>11}{'cpu us/req':>11}"
    )
    print(head)
    for r in results:
        commits = f"{r.commits:>9,}{r.ok204 / r.commits:>11.1f}" if r.commits else f"{'-':>9}{'-':>11}"
        print(
            f"{r.server:<12}{r.batch:>7}{r.connections:>6}{r.rps:>10,.0f}{r.eps:>11,.0f}{r.p50_ms:>8.2f}"
            f"{r.p90_ms:>8.2f}{r.p99_ms:>8.2f}{r.max_ms:>8.1f}{r.ok204:>9,}{r.not204:>8}{r.socket_errors:>8}"
            f"{r.cpu_total / r.seconds:>6.2f}{r.cpu_main / r.seconds:>6.2f}{r.cpu_other / r.seconds:>6.2f}{commits}"
            f"{r.cpu_total / max(r.requests, 1) * 1e6:>11,.0f}"
        )
    print(
        f"\n  {duration} s per case, wrk -t{threads}; cpu = server CPU cores used (main = event-loop thread,"
        " other = busiest other thread, i.e. the writer for meterline); cpu us/req = server CPU per answered"
        " request, which a busy machine disturbs less than the rates"
    )
    print("\nAccepted events vs. what wrk saw (servers that store)")
    print(
        f"{'server':<12}{'ev/req':>7}{'2xx answers x batch':>21}{'accepted (/metrics)':>21}{'sent by wrk x batch':>21}"
    )
    for r in results:
        if r.commits:
            print(f"{r.server:<12}{r.batch:>7}{r.ok204 * r.batch:>21,}{r.accepted:>21,}{r.sent * r.batch:>21,}")
    print(
        "  (accepted may exceed 2xx x batch by the requests in flight when wrk stopped: they were"
        " stored, but wrk closed the connection before reading the answer)"
    )
    aggregated = [r for r in results if r.aggregated is not None]
    if aggregated:
        print("\nAggregator: lag when the load stopped, time to drain it, events applied per second (load + drain)")
        print(f"{'server':<12}{'ev/req':>7}{'lag at end':>12}{'drain s':>9}{'aggregated':>12}{'aggregated/s':>14}")
        for r in aggregated:
            assert r.drain_s is not None and r.aggregated is not None and r.lag_at_end is not None
            rate = r.aggregated / (r.seconds + r.drain_s)
            print(f"{r.server:<12}{r.batch:>7}{r.lag_at_end:>12,}{r.drain_s:>9.2f}{r.aggregated:>12,}{rate:>14,.0f}")


def ranges(results: list[Result]) -> None:
    """Min-max over the rounds of each server and case: rate, p99 and CPU per request."""
    print("\nRanges over the rounds (min-max)")
    print(f"{'server':<12}{'ev/req':>7}{'req/s':>18}{'events/s':>20}{'p99 ms':>18}{'cpu us/req':>18}")
    groups: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.server, r.batch), []).append(r)
    for (server, batch), rs in groups.items():
        cells = [
            [r.rps for r in rs],
            [r.eps for r in rs],
            [r.p99_ms for r in rs],
            [r.cpu_total / max(r.requests, 1) * 1e6 for r in rs],
        ]
        print(
            f"{server:<12}{batch:>7}"
            + "".join(f"{f'{min(c):,.0f}-{max(c):,.0f}':>{w}}" for c, w in zip(cells, (18, 20, 18, 18), strict=True))
        )


@dataclass
class Variant:
    """One server of the run: meterline or its no-op ceiling, of this checkout or the baseline."""

    name: str
    noop: bool
    env: dict[str, str]
    server: Server | None = None
    data_dir: Path = Path()

    def start(self, work: Path, fsync: str) -> Server:
        self.data_dir = work / self.name.replace(" ", "_")
        log = work / f"{self.name.replace(' ', '_')}.log"
        if self.noop:
            self.server = start_noop(self.data_dir, log, self.env, self.name)
        else:
            env = {"METERLINE_STORAGE__FSYNC": fsync, **self.env}
            self.server = start_meterline(self.data_dir, log, env, self.name)
        httpx.post(
            f"{self.server.url}/api/v1/meters", json=METER, headers=self.server.headers, timeout=10
        ).raise_for_status()
        return self.server


def variants(args: argparse.Namespace) -> list[Variant]:
    """Taking turns in this order within each case (reversed in odd rounds): baseline ceiling, baseline,
    ceiling, this."""
    out: list[Variant] = []
    if args.baseline:
        env = {"PYTHONPATH": os.path.abspath(args.baseline)}
        out += [] if args.no_noop else [Variant("noop base", True, env)]
        out.append(Variant("base", False, env))
    out += [] if args.no_noop else [Variant("noop", True, {})]
    out.append(Variant("meterline", False, {}))
    return out


def drain(server: Server, timeout: float = 300.0) -> tuple[float, dict[str, float]]:
    """Seconds until the rollup lag (aggregator and backfill) is 0, and the metrics then."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        m = metrics(server)
        if m.get("meterline_rollup_lag_events", 0) == 0:
            return time.monotonic() - started, m
        time.sleep(0.02)
    raise RuntimeError("the rollup lag did not reach 0")


def measure(v: Variant, work: Path, batch: int, connections: int, args: argparse.Namespace) -> Result:
    assert v.server is not None
    before = metrics(v.server)
    r = run_wrk(v.server, work, batch, connections, args.threads, args.duration, ids=args.ids, customers=args.customers)
    if not v.noop:
        after = settle(v.server)
        r.accepted = int(after["meterline_events_total:accepted"] - before["meterline_events_total:accepted"])
        r.commits = int(after["meterline_group_commits"] - before["meterline_group_commits"])
        if "meterline_aggregation_lag_events" in after:
            r.lag_at_end = int(after["meterline_rollup_lag_events"])
            r.drain_s, drained = drain(v.server)
            r.aggregated = int(
                drained["meterline_aggregated_events_total"] - before["meterline_aggregated_events_total"]
            )
    print(
        f"  {v.name:<11} {batch:>4} ev/req x {connections:>3} conns: {r.rps:>8,.0f} req/s"
        f" {r.eps:>10,.0f} ev/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms"
        f"  non-2xx {r.not204}  socket errors {r.socket_errors}",
        flush=True,
    )
    if r.first_bad:
        print(f"    first non-2xx answer: {r.first_bad}")
    if args.verbose:
        print(r.raw)
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per case (default 10)")
    parser.add_argument("--rounds", type=int, default=1, help="run all cases this many times (default 1)")
    parser.add_argument("--cases", default="1:64,100:16,1000:8", help="events-per-request:connections,...")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the machine has 2 cores)")
    parser.add_argument("--ids", choices=["random", "sequential"], default="random", help="event ids (default UUIDv4)")
    parser.add_argument("--customers", type=int, default=10_000, help="distinct subjects (default 10000)")
    parser.add_argument("--baseline", help="src/ directory of another checkout, measured too (taking turns)")
    parser.add_argument("--no-noop", action="store_true", help="skip the no-op ceiling")
    parser.add_argument("--fsync", choices=["full", "normal"], default="full")
    parser.add_argument("--verbose", action="store_true", help="print wrk's own output too")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    cases = [tuple(int(x) for x in c.split(":")) for c in args.cases.split(",")]
    print(f"machine: {machine()}")
    print(f"code: {code_version()}" + (f"; baseline: {args.baseline}" if args.baseline else ""))
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="meterline-bench-") as tmp:
        work = Path(tmp)
        servers = variants(args)
        try:
            for v in servers:
                v.start(work, args.fsync)
            for rnd in range(args.rounds):
                # the slot run second in a pair loses ~3 % at 1000-event requests (an A/A run):
                # odd rounds take turns in the reverse order, so each variant runs first as often
                order = servers if rnd % 2 == 0 else servers[::-1]
                for batch, connections in cases:
                    for v in order:
                        results.append(measure(v, work, batch, connections, args))
                        time.sleep(1)
            report(results, args.duration, args.threads, args)
            if args.rounds > 1:
                ranges(results)
            print("\nVerification (whole run, servers that store): /metrics, the ledger and the query API agree")
            for v in servers:
                if not v.noop and v.server is not None:
                    verify(v.server, v.data_dir)
            print("\nJSON " + json.dumps([{**vars(r), "raw": None} for r in results]))
        finally:
            for v in servers:
                if v.server is not None:
                    v.server.stop()
                    if v.server.process.returncode not in (0, -15):
                        print(f"{v.name} exited with {v.server.process.returncode}:\n{v.server.log_tail()}")


if __name__ == "__main__":
    main()
