"""First render of every dashboard view over a real ``meterline serve`` on a seeded ledger.

    ./run bench dashboard_views [--events 1000000] [--repeat 5] [--data-dir DIR]

Seeding is ``query_latency``'s (the real ingest code in-process: 12 months, 1000 customers, a
SUM meter ``tokens`` with a groupBy), so ``--data-dir`` directories are shared with it. Then a
server runs on the data directory, signs in through the sign-in form (a real session cookie),
and each view's URL is fetched: the **first** fetch of each (cold: nothing of that view read
before in this process) and then ``--repeat`` more (warm), sequentially over one keep-alive
connection, as a browser's page load of the HTML (the static files are cached by a browser and
not counted). Every answer must be 200 and hold the number the view is expected to show.
Ranges are explicit (January 2026, the 12 seeded months), as a bookmarked view's URL would
be. Beside each first render's wall time: the CPU time the server process spent on it (every
thread), and the 1-minute load average while measuring, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import _spawn, code_version, free_port, machine, make_key, wait_ready
from query_latency import expected_from_store, ledger_size, seed

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
    ("events, one customer", "/ui/events?subject=cust-42"),
    ("events, page 100 (before=)", None),
    ("events, a type no event has", "/ui/events?type=nosuch"),
    ("events, an id no event has (one window)", "/ui/events?id=nosuch"),
    ("events, subject + event time (one window)", "/ui/events?subject=cust-42&from=2026-01-01T00:00"),
    ("customers", "/ui/customers"),
    ("customer cust-42, Jan 2026", f"/ui/customers/cust-42?{JAN}"),
    ("dead letters", "/ui/dead-letters"),
    ("quarantine", "/ui/quarantine"),
    ("reconciliation, Jan 2026 by month", f"/ui/reconciliation?{JAN}"),
    ("reconciliation, 12 months by month", f"/ui/reconciliation?{YEAR}"),
    ("reconciliation, 12 months by month, Asia/Kolkata", f"/ui/reconciliation?{YEAR}&tz=Asia/Kolkata"),
]  # fmt: skip


def serve(data_dir: Path) -> Any:
    """``meterline serve`` on the data directory (as ``start_meterline``, with a longer wait for
    readiness: opening a large store on a busy machine can take more than 30 s)."""
    key, port = make_key(data_dir), free_port()
    args = [sys.executable, "-m", "meterline.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    server = _spawn(
        "meterline", args, data_dir.parent / "dashboard-serve.log", {"METERLINE_LOG__LEVEL": "WARNING"}, port
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
    parser.add_argument("--data-dir", type=Path, help="keep the seeded data here and reuse it when it matches")
    parser.add_argument(
        "--ledger-only",
        action="store_true",
        help="only time the explorer's ledger reads in-process on a read-only connection (no server, no rollups)",
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"code: {code_version()}")
    if args.ledger_only:
        if args.data_dir is None:
            sys.exit("--ledger-only needs --data-dir")
        ledger_reads(args.data_dir, args.repeat)
        return
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="meterline-bench-")) / "data"
    have = ledger_size(data_dir)
    if have == args.events:
        print(f"reusing {data_dir}: {have:,} events already seeded")
        expected = expected_from_store(data_dir)
    elif have:
        sys.exit(f"{data_dir} holds {have:,} events, not {args.events:,}; use another --data-dir")
    else:
        expected = seed(data_dir, args.events, 5000, 2, False)
    server = serve(data_dir)
    process = psutil.Process(server.pid)
    rows = []
    loads = [os.getloadavg()[0]]
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            sign_in(client, server.key)
            for name, path in VIEWS:
                if path is None:
                    path = page_100(client)
                first, first_cpu, text = fetch(client, path, process)
                check(name, text, expected.total)
                warm = [fetch(client, path, process)[:2] for _ in range(args.repeat)] or [(first, first_cpu)]
                walls = [w for w, _ in warm]
                rows.append((name, first, first_cpu, statistics.median(walls), max(walls)))
                loads.append(os.getloadavg()[0])
    finally:
        server.stop()
    print(f"\nDashboard views, {args.events:,} events: first render (wall and server CPU) and warm fetches (ms)")
    print(f"1-minute load average while measuring: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores")
    print(f"{'view':<52}{'first':>9}{'CPU':>9}{'warm p50':>10}{'warm max':>10}")
    for name, first, cpu, median, worst in rows:
        ms = [first * 1000, cpu * 1000, median * 1000, worst * 1000]
        print(f"{name:<52}{ms[0]:>9.1f}{ms[1]:>9.1f}{ms[2]:>10.1f}{ms[3]:>10.1f}")


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


def check(name: str, text: str, cust42_january: int) -> None:
    """Views that show cust-42's January total must show the seeded one."""
    if name.startswith("customer cust-42"):
        shown = f"{cust42_january:,}"
        if shown not in text:
            sys.exit(f"{name}: the page does not show cust-42's January total {shown}")


if __name__ == "__main__":
    main()
