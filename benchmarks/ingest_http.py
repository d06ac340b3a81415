"""HTTP ingest throughput of a real ``meterline serve`` process, next to a no-op ceiling.

    ./run bench ingest_http [--duration 10] [--cases 1:64,100:16,1000:8] [--threads 1]

For each case (events per request : connections) wrk posts CloudEvents batches for
``--duration`` seconds, every event with a unique id (so all are accepted, none is a
duplicate), first to the no-op app (benchmarks/noop_app.py: same HTTP stack and decoding, no
storage), then to meterline. Before the load a SUM meter with a groupBy is created, so each
event goes through dedupe, meter evaluation, the ledger and the rollups, with the default
fsync "full" (an answer means the events are synced to disk).

Afterwards the figures are checked against the server: accepted events (from /metrics)
against what wrk saw answered, the writer's commits, and the meter's SUM from the query API
against a sum recomputed from the ledger.
"""

from __future__ import annotations

import argparse
import json
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
  counter = 0
  sent = 0
  ok204 = 0
  not204 = 0
  first_bad = ""
end

function request()
  local parts = {}
  for i = 1, batch do
    counter = counter + 1
    local n = counter
    parts[i] = string.format(
      '{"specversion":"1.0","id":"%s%d","source":"wrk","type":"prompt","subject":"cust-%d",'
      .. '"data":{"tokens":%d,"model":"%s"}}',
      prefix, n, n % 1000, n % 97, models[n % 3 + 1])
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
    first_bad: str = ""
    raw: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def eps(self) -> float:
        return self.requests * self.batch / self.seconds


def run_wrk(
    server: Server, work: Path, batch: int, connections: int, threads: int, duration: int, extra_lua: str = ""
) -> Result:
    """``extra_lua`` is appended to the script (it may wrap ``response`` or add ``delay``)."""
    run_id = f"{server.name}-b{batch}-{time.time_ns()}"
    script = work / f"{run_id}.lua"
    script.write_text(
        LUA.replace("__BATCH__", str(batch)).replace("__RUN__", run_id).replace("__KEY__", server.key or "none")
        + extra_lua
    )
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
    by_model = httpx.get(
        f"{server.url}/api/v1/meters/tokens/query", params={"groupBy": "model"}, headers=server.headers, timeout=60
    ).json()["data"]
    m = metrics(server)
    conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    ledger_n, ledger_sum = conn.execute(
        "SELECT count(*), coalesce(sum(raw ->> '$.data.tokens'), 0) FROM events WHERE type = 'prompt'"
    ).fetchone()
    dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    conn.close()
    accepted = int(m.get("meterline_events_total:accepted", 0))
    print("\nVerification (whole run, meterline only)")
    print(f"  accepted events (/metrics)        {accepted:>14,}")
    print(
        f"  duplicates / rejected (/metrics)  {int(m.get('meterline_events_total:duplicate', 0)):>6,}"
        f" / {int(m.get('meterline_events_total:rejected', 0)):,}   dead letters in store: {dead:,}"
    )
    print(f"  events in ledger                  {ledger_n:>14,}")
    print(f"  SUM(tokens) recomputed from ledger{ledger_sum:>14,}")
    print(f"  SUM(tokens) from the query API    {api_sum:>14,.0f}   ({len(by_model)} groups by model)")
    print(f"  rollup lag (events)               {int(m.get('meterline_rollup_lag_events', 0)):>14,}")
    ok = accepted == ledger_n and int(api_sum) == ledger_sum
    print(f"  => {'consistent' if ok else 'MISMATCH'}")


def report(results: list[Result], duration: int, threads: int, fsync: str) -> None:
    print(f"\nResults (wrk, 127.0.0.1, meterline with fsync={fsync})")
    head = (
        f"{'server':<10}{'ev/req':>7}{'conns':>6}{'req/s':>10}{'events/s':>11}{'p50 ms':>8}{'p90 ms':>8}"
        f"{'p99 ms':>8}{'max ms':>8}{'204s':>9}{'non-204':>8}{'sockerr':>8}{'cpu':>6}{'main':>6}{'other':>6}"
        f"{'commits':>9}{'req/commit':>11}"
    )
    print(head)
    for r in results:
        commits = f"{r.commits:>9,}{r.ok204 / r.commits:>11.1f}" if r.commits else f"{'-':>9}{'-':>11}"
        print(
            f"{r.server:<10}{r.batch:>7}{r.connections:>6}{r.rps:>10,.0f}{r.eps:>11,.0f}{r.p50_ms:>8.2f}"
            f"{r.p90_ms:>8.2f}{r.p99_ms:>8.2f}{r.max_ms:>8.1f}{r.ok204:>9,}{r.not204:>8}{r.socket_errors:>8}"
            f"{r.cpu_total / r.seconds:>6.2f}{r.cpu_main / r.seconds:>6.2f}{r.cpu_other / r.seconds:>6.2f}{commits}"
        )
    print(
        f"\n  {duration} s per case, wrk -t{threads}; cpu = server CPU cores used (main = event-loop thread,"
        " other = busiest other thread, i.e. the writer for meterline)"
    )
    print("\nAccepted events vs. what wrk saw (meterline)")
    print(f"{'ev/req':>7}{'204 answers x batch':>21}{'accepted (/metrics)':>21}{'sent by wrk x batch':>21}")
    for r in results:
        if r.server == "meterline":
            print(f"{r.batch:>7}{r.ok204 * r.batch:>21,}{r.accepted:>21,}{r.sent * r.batch:>21,}")
    print(
        "  (accepted may exceed 204s x batch by the requests in flight when wrk stopped: they were"
        " stored, but wrk closed the connection before reading the answer)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per case (default 10)")
    parser.add_argument("--cases", default="1:64,100:16,1000:8", help="events-per-request:connections,...")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the machine has 2 cores)")
    parser.add_argument("--no-noop", action="store_true", help="skip the no-op ceiling")
    parser.add_argument("--fsync", choices=["full", "normal"], default="full")
    parser.add_argument("--verbose", action="store_true", help="print wrk's own output too")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    cases = [tuple(int(x) for x in c.split(":")) for c in args.cases.split(",")]
    print(f"machine: {machine()}")
    print(f"code: {code_version()}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="meterline-bench-") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        servers: list[Server] = []
        try:
            noop = None if args.no_noop else start_noop(work / "noop.log")
            servers += [noop] if noop else []
            meterline = start_meterline(data_dir, work / "meterline.log", {"METERLINE_STORAGE__FSYNC": args.fsync})
            servers.append(meterline)
            httpx.post(
                f"{meterline.url}/api/v1/meters", json=METER, headers=meterline.headers, timeout=10
            ).raise_for_status()
            for batch, connections in cases:
                for server in ([noop] if noop else []) + [meterline]:
                    before = metrics(server) if server is meterline else {}
                    r = run_wrk(server, work, batch, connections, args.threads, args.duration)
                    if server is meterline:
                        after = settle(server)
                        r.accepted = int(
                            after["meterline_events_total:accepted"] - before["meterline_events_total:accepted"]
                        )
                        r.commits = int(after["meterline_group_commits"] - before["meterline_group_commits"])
                    results.append(r)
                    print(
                        f"  {server.name:<9} {batch:>4} ev/req x {connections:>3} conns: {r.rps:>8,.0f} req/s"
                        f" {r.eps:>10,.0f} ev/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms"
                        f"  non-204 {r.not204}  socket errors {r.socket_errors}",
                        flush=True,
                    )
                    if r.first_bad:
                        print(f"    first non-204 answer: {r.first_bad}")
                    if args.verbose:
                        print(r.raw)
                    time.sleep(1)
            report(results, args.duration, args.threads, args.fsync)
            verify(meterline, data_dir)
            print("\nJSON " + json.dumps([{**vars(r), "raw": None} for r in results]))
        finally:
            for server in servers:
                server.stop()
                if server.process.returncode not in (0, -15):
                    print(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")


if __name__ == "__main__":
    main()
