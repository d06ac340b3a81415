"""First render of every dashboard view over a real ``meterline serve`` on a seeded store.

    ./run bench dashboard_views --events 10000000 --data-dir DIR [--repeat 5]
    ./run bench dashboard_views --data-dir DIR --baseline OLD/src --rounds 2   # two codes, taking turns

Seeding is ``dashboard_seed``'s (the real in-process path: the embedded backend's ledger append
in 1000-event batches and the aggregator draining; UUIDv4 ids, 5000 customers with skewed
usage, three meters, 12 months; a ``--data-dir`` is reused when it holds a finished seeding, and
one whose seeding was stopped part-way is measured as it is, the server aggregating what the
seeder had not). Then a server runs on the data directory, makes invoices over HTTP (a plan,
the largest customers subscribed for the seeded year, a billing run: ``dashboard_seed.invoices``),
signs in through the sign-in form (a real session cookie), and each view's URL is fetched: the
**first** fetch of each (cold: nothing of that view read before in this process) and then
``--repeat`` more, sequentially over one keep-alive connection, as a browser's page load of the
HTML (static files are cached by a browser and not counted). Every answer must be 200; the
largest customer's page must show its January tokens. Per view: the first render's wall time
and server CPU (the server process's user + system time for the request, every thread), and
p50/p99 of wall time and server CPU over all loads; the 1-minute load average is printed,
since the machine may be shared. Ranges are explicit, as a bookmarked view's URL would be.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import _spawn, code_version, free_port, machine, make_key, percentile, wait_ready
from dashboard_seed import JANUARY, Seeded, invoices, load, seed
from query_latency import ledger_size

from meterline.adapters.sqlite.database import DB_FILE
from meterline.adapters.sqlite.ledger import SqliteLedger
from meterline.adapters.sqlite.schema import connect
from meterline.api.dashboard import debug
from meterline.ports.ledger import EventFilter

JAN = "from=2026-01-01&to=2026-01-31"
YEAR = "from=2025-03-01&to=2026-02-28"
JAN_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
VIEWS = [
    ("executive, Jan 2026 by day", f"/ui/executive?{JAN}"),
    ("executive, 12 months by month", f"/ui/executive?grain=month&{YEAR}"),
    ("executive, 12 months by month, Asia/Kathmandu", f"/ui/executive?grain=month&{YEAR}&tz=Asia/Kathmandu"),
    ("executive, 12 months by day, America/New_York", f"/ui/executive?grain=day&{YEAR}&tz=America/New_York"),
    ("executive, 12 weeks by week, America/New_York", "/ui/executive?grain=week&tz=America/New_York"
     "&from=2025-12-01&to=2026-02-22"),
    ("on-call", "/ui/oncall"),
    ("events, newest page", "/ui/events"),
    ("events, one customer", "/ui/events?subject={c42}"),
    ("events, page 100 (before=)", None),
    ("events, middle of the ledger (before=N/2)", "HALF"),
    ("events, oldest page (before=51)", "/ui/events?before=51"),
    ("events, a type no event has", "/ui/events?type=nosuch"),
    ("events, an id no event has (one window)", "/ui/events?id=nosuch"),
    ("events, subject + event time (one window)", "/ui/events?subject={c42}&from=2026-01-01T00:00"),
    ("events, largest customer, one type", "/ui/events?subject={c0}&type=storage"),
    ("customers", "/ui/customers"),
    ("customer of rank 42, Jan 2026", f"/ui/customers/{{c42}}?{JAN}"),
    ("largest customer, Jan 2026", f"/ui/customers/{{c0}}?{JAN}"),
    ("largest customer, 12 months by month", f"/ui/customers/{{c0}}?grain=month&{YEAR}"),
    ("dead letters", "/ui/dead-letters"),
    ("quarantine", "/ui/quarantine"),
    ("reconciliation, Jan 2026 by month", f"/ui/reconciliation?{JAN}"),
    ("reconciliation, 12 months by month", f"/ui/reconciliation?{YEAR}"),
    ("reconciliation, 12 months by month, Asia/Kolkata", f"/ui/reconciliation?{YEAR}&tz=Asia/Kolkata"),
]  # fmt: skip


def serve(data_dir: Path, env: dict[str, str] | None = None) -> Any:
    """``meterline serve`` on the data directory (as ``start_meterline``, with a longer wait for
    readiness: opening a large store on a busy machine can take more than 30 s); ``env``: e.g.
    another checkout's ``PYTHONPATH``."""
    key, port = make_key(data_dir), free_port()
    args = [sys.executable, "-m", "meterline.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    server = _spawn(
        "meterline",
        args,
        data_dir.parent / "dashboard-serve.log",
        {"METERLINE_LOG__LEVEL": "WARNING", **(env or {})},
        port,
    )
    server.key = key
    started = time.perf_counter()
    wait_ready(server, timeout=3600)  # a store from before the summaries gains them on opening
    print(f"server ready after {time.perf_counter() - started:.1f} s")
    return server


def sign_in(client: httpx.Client, key: str) -> None:
    form = client.get("/ui/sign-in").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    r = client.post("/ui/sign-in", data={"csrf": token.group(1), "key": key, "next": "/ui/"})
    if r.status_code != 303:
        sys.exit(f"sign-in failed: {r.status_code} {r.text[:200]}")


def fetch(client: httpx.Client, path: str, server: psutil.Process) -> tuple[float, float, str]:
    """Wall seconds, the server process's CPU seconds (every thread) and the page."""
    cpu = _cpu(server)
    started = time.perf_counter()
    r = client.get(path)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        sys.exit(f"{path}: {r.status_code} {r.text[:300]}")
    return elapsed, _cpu(server) - cpu, r.text


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to seed (default 1000000)")
    parser.add_argument("--repeat", type=int, default=5, help="warm fetches per view after the first (default 5)")
    parser.add_argument("--data-dir", type=Path, help="keep the seeded data here (outside the repository) and reuse it")
    parser.add_argument("--customers", type=int, default=5000, help="customers when seeding (default 5000)")
    parser.add_argument("--uuid-keys", action="store_true", help="when seeding: customers keyed by UUIDv4-like keys")
    parser.add_argument("--subscribers", type=int, default=50, help="largest customers invoiced monthly (default 50)")
    parser.add_argument("--baseline", help="src/ directory of another checkout, measured too on the same store")
    parser.add_argument("--rounds", type=int, default=1, help="with --baseline: rounds, the order swapped each round")
    parser.add_argument(
        "--ledger-only",
        action="store_true",
        help="only time the explorer's ledger reads in-process on a read-only connection (no server, no rollups)",
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"code: {code_version()}" + (f"; baseline: {args.baseline}" if args.baseline else ""))
    if args.ledger_only:
        if args.data_dir is None:
            sys.exit("--ledger-only needs --data-dir")
        ledger_reads(args.data_dir, args.repeat)
        return
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="meterline-bench-")) / "data"
    seeded = load(data_dir)
    have = ledger_size(data_dir)
    if seeded is not None:
        print(f"reusing {data_dir}: {seeded.events:,} events seeded")
    elif have:
        print(f"{data_dir}: a seeding stopped part-way, {have:,} events in the ledger; measured as it is")
        seeded = Seeded(have, 0, "cust-0", january_tokens(data_dir, "cust-0"), 0)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        seeded = seed(data_dir, args.events, args.customers, args.uuid_keys)
    codes = [("this code", {})]
    if args.baseline:
        codes.insert(0, ("baseline", {"PYTHONPATH": os.path.abspath(args.baseline)}))
    results: dict[str, list[list[Sample]]] = {name: [] for name, _ in codes}
    loads: list[float] = []
    for round_ in range(args.rounds if args.baseline else 1):
        for name, env in codes if round_ % 2 == 0 else codes[::-1]:
            print(f"round {round_ + 1}: {name}", flush=True)
            results[name].append(measure(data_dir, seeded, env, args, loads))
    n = ledger_size(data_dir)
    print(f"\nDashboard views, {n:,} events, {seeded.customers or 'unknown'} customers:"
          f" first render and p50/p99 over {args.repeat + 1} loads (ms)")  # fmt: skip
    print(f"1-minute load average while measuring: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores")
    for name, runs in results.items():
        for i, rows in enumerate(runs):
            print(f"\n{name}, round {i + 1}")
            report(rows)
    if args.baseline:
        side_by_side(results)


Sample = tuple[str, float, float, list[float], list[float]]
"""A view's name, first render wall and CPU seconds, and every load's wall and CPU seconds."""


def measure(data_dir: Path, seeded: Seeded, env: dict[str, str], args: Any, loads: list[float]) -> list[Sample]:
    """One server of one code on the store: invoices, sign-in, every view (first and warm)."""
    server = serve(data_dir, env)
    process = psutil.Process(server.pid)
    rows = []
    try:
        with httpx.Client(base_url=server.url, timeout=3600) as client:
            caught_up(client)
            with httpx.Client(base_url=server.url, timeout=3600, headers=bearer(server.key)) as admin:
                invoices(admin, args.subscribers, seeded.uuid_keys)
            sign_in(client, server.key)
            loads.append(os.getloadavg()[0])
            for name, path in VIEWS:
                if path is None:
                    path = page_100(client)
                elif path == "HALF":
                    path = f"/ui/events?before={ledger_size(data_dir) // 2}"
                path = path.format(c0=seeded.key(0), c42=seeded.key(42))
                first, first_cpu, text = fetch(client, path, process)
                check(name, text, seeded)
                samples = [(first, first_cpu)] + [fetch(client, path, process)[:2] for _ in range(args.repeat)]
                rows.append((name, first, first_cpu, [w for w, _ in samples], [c for _, c in samples]))
                loads.append(os.getloadavg()[0])
    finally:
        server.stop()
    return rows


def report(rows: list[Sample]) -> None:
    print(f"{'view':<52}{'first':>8}{'CPU':>7}{'p50':>8}{'p99':>8}{'CPU p50':>9}{'CPU p99':>9}")
    for name, first, cpu, walls, cpus in rows:
        ms = [first, cpu, _pct(walls, 50), _pct(walls, 99), _pct(cpus, 50), _pct(cpus, 99)]
        print(f"{name:<52}" + "".join(f"{v * 1000:>{w}.0f}" for v, w in zip(ms, (8, 7, 8, 8, 9, 9), strict=True)))


def side_by_side(results: dict[str, list[list[Sample]]]) -> None:
    """First render (wall and CPU) of each view, baseline beside this code, every round."""
    print("\nFirst render, baseline -> this code (ms; rounds separated by /)")
    print(f"{'view':<52}{'wall before':>16}{'wall after':>16}{'CPU before':>16}{'CPU after':>16}")
    for i, (name, *_) in enumerate(results["this code"][0]):
        cols = []
        for field in (1, 2):
            for code in ("baseline", "this code"):
                cols.append(" / ".join(f"{runs[i][field] * 1000:.0f}" for runs in results[code]))
        print(f"{name:<52}" + "".join(f"{c:>16}" for c in (cols[0], cols[1], cols[2], cols[3])))


def january_tokens(data_dir: Path, subject: str) -> int:
    """``subject``'s January 2026 tokens, summed from the ledger (one scan: for a store whose
    seeding stopped before it wrote its own figures)."""
    conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT sum(raw ->> '$.data.tokens') FROM events WHERE subject = ? AND type = 'prompt'"
            " AND time_us >= ? AND time_us < ?",
            (subject, *JANUARY),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0] or 0)


def _pct(samples: list[float], p: int) -> float:
    return percentile(sorted(samples), p)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def caught_up(client: httpx.Client) -> None:
    """Waits until the server's aggregator has applied the whole ledger (``/metrics``: no rollup
    lag; a store whose seeding stopped part-way is aggregated by the server first), printing
    how long that took. Polls every 5 s: a benchmark's wait, not a test's."""
    started = time.perf_counter()
    while True:
        text = client.get("/metrics").text
        lag = sum(float(v) for v in re.findall(r"^meterline_rollup_lag_events(?:\{[^}]*\})? (\S+)$", text, re.M))
        if lag == 0:
            break
        print(f"  aggregator {lag:,.0f} events behind", flush=True)
        time.sleep(5)
    print(f"aggregator caught up {time.perf_counter() - started:.0f} s after the server was ready")


EXPLORER = [
    ("newest page", EventFilter()),
    ("one customer (subject contains cust-42)", EventFilter(subject="cust-42")),
    ("a type no event has", EventFilter(type="nosuch")),
    ("an id no event has", EventFilter(event_id="nosuch")),
    ("a source no event has", EventFilter(source="nosuch")),
    ("type prompt, subject cust-42, from 2026-01-01", EventFilter(type="prompt", subject="cust-42", start_us=JAN_US)),
]


def ledger_reads(data_dir: Path, repeat: int) -> None:
    """The explorer's first page per filter, as the dashboard asks it (a filtered page looks
    through one window of ``debug.SCAN`` positions), through ``SqliteLedger.list`` on a
    read-only connection: first (cold) and best of ``repeat`` more, CPU beside wall."""
    conn = connect(data_dir / DB_FILE, readonly=True)
    ledger = SqliteLedger(_ReadOnly(conn), None, lambda: 0)  # type: ignore[arg-type]  # list() reads only
    top = int(conn.execute("SELECT max(seq) FROM events").fetchone()[0]) + 1
    print(f"\nExplorer pages on {top - 1:,} ledger entries, in-process (ms), load {os.getloadavg()[0]:.1f}")
    print(f"{'filter':<52}{'rows':>6}{'first':>10}{'CPU':>9}{'best':>9}")
    for name, f in EXPLORER:
        if f != EventFilter():
            f = dataclasses.replace(f, before_seq=top, from_seq=max(1, top - debug.SCAN))
        times = []
        for _ in range(repeat + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            rows = ledger.list("default", f, limit=debug.PAGE)
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
        best = min(w for w, _ in times[1:]) if repeat else times[0][0]
        print(f"{name:<52}{len(rows):>6}{times[0][0] * 1000:>10.1f}{times[0][1] * 1000:>9.1f}{best * 1000:>9.1f}")


class _ReadOnly:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def reader(self) -> sqlite3.Connection:
        return self._conn


def page_100(client: httpx.Client) -> str:
    """The URL of the events explorer's 100th page, found by following ``Older`` links."""
    path = "/ui/events"
    for _ in range(99):
        found = re.search(r'href="\?([^"]*before=\d+[^"]*)" rel="next"', client.get(path).text)
        if found is None:
            break
        path = "/ui/events?" + found.group(1).replace("&amp;", "&")
    return path


def check(name: str, text: str, seeded: Seeded) -> None:
    """The largest customer's January page must show the January tokens kept while seeding."""
    if name.startswith("largest customer, Jan") and seeded.largest_january_tokens >= 0:
        shown = f"{seeded.largest_january_tokens:,}"
        if shown not in text:
            sys.exit(f"{name}: the page does not show cust-0's January tokens {shown}")


if __name__ == "__main__":
    main()
