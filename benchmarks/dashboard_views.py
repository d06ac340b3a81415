"""First render of every dashboard view over a real ``meterline serve`` on a seeded ledger.

    ./run bench dashboard_views [--events 1000000] [--repeat 5] [--data-dir DIR]

Seeding is ``query_latency``'s (the real ingest code in-process: 12 months, 1000 customers, a
SUM meter ``tokens`` with a groupBy), so ``--data-dir`` directories are shared with it. Then a
server runs on the data directory, signs in through the sign-in form (a real session cookie),
and each view's URL is fetched: the **first** fetch of each (cold: nothing of that view read
before in this process) and then ``--repeat`` more (warm), sequentially over one keep-alive
connection, as a browser's page load of the HTML (the static files are cached by a browser and
not counted). Every answer must be 200 and hold the number the view is expected to show.
Ranges are explicit (January 2026), as a bookmarked view's URL would be.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import _spawn, code_version, free_port, machine, make_key, wait_ready
from query_latency import expected_from_store, ledger_size, seed

JAN = "from=2026-01-01&to=2026-01-31"
VIEWS = [
    ("executive, Jan 2026 by day", f"/ui/executive?{JAN}"),
    ("executive, 12 months by month", "/ui/executive?grain=month&from=2025-03-01&to=2026-02-28"),
    ("on-call", "/ui/oncall"),
    ("events, newest page", "/ui/events"),
    ("events, one customer", "/ui/events?subject=cust-42"),
    ("events, page 100 (before=)", None),
    ("customers", "/ui/customers"),
    ("customer cust-42, Jan 2026", f"/ui/customers/cust-42?{JAN}"),
    ("dead letters", "/ui/dead-letters"),
    ("quarantine", "/ui/quarantine"),
    ("reconciliation, Jan 2026 by month", f"/ui/reconciliation?{JAN}"),
    ("reconciliation, 12 months by month", "/ui/reconciliation?from=2025-03-01&to=2026-02-28"),
    ("reconciliation + ledger check, Jan 2026", f"/ui/reconciliation?{JAN}&check=ledger"),
]


def serve(data_dir: Path) -> Any:
    """``meterline serve`` on the data directory (as ``start_meterline``, with a longer wait for
    readiness: opening a large store on a busy machine can take more than 30 s)."""
    key, port = make_key(data_dir), free_port()
    args = [sys.executable, "-m", "meterline.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    server = _spawn(
        "meterline", args, data_dir.parent / "dashboard-serve.log", {"METERLINE_LOG__LEVEL": "WARNING"}, port
    )
    server.key = key
    wait_ready(server, timeout=300)
    return server


def sign_in(client: httpx.Client, key: str) -> None:
    form = client.get("/ui/sign-in").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    r = client.post("/ui/sign-in", data={"csrf": token.group(1), "key": key, "next": "/ui/"})
    if r.status_code != 303:
        sys.exit(f"sign-in failed: {r.status_code} {r.text[:200]}")


def fetch(client: httpx.Client, path: str) -> tuple[float, str]:
    started = time.perf_counter()
    r = client.get(path)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        sys.exit(f"{path}: {r.status_code} {r.text[:300]}")
    return elapsed, r.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to seed (default 1000000)")
    parser.add_argument("--repeat", type=int, default=5, help="warm fetches per view after the first (default 5)")
    parser.add_argument("--data-dir", type=Path, help="keep the seeded data here and reuse it when it matches")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"code: {code_version()}")
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
    rows = []
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            sign_in(client, server.key)
            for name, path in VIEWS:
                if path is None:
                    path = page_100(client)
                first, text = fetch(client, path)
                check(name, text, expected.total)
                warm = [fetch(client, path)[0] for _ in range(args.repeat)]
                rows.append((name, first, statistics.median(warm) if warm else first, max(warm or [first])))
    finally:
        server.stop()
    print(f"\nDashboard views, {args.events:,} events: first render and warm median of {args.repeat} (ms)")
    print(f"{'view':<40}{'first':>10}{'warm p50':>10}{'warm max':>10}")
    for name, first, median, worst in rows:
        print(f"{name:<40}{first * 1000:>10.1f}{median * 1000:>10.1f}{worst * 1000:>10.1f}")


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
