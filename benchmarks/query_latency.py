"""Query latency for one customer's month, over HTTP and in-process, on a seeded ledger.

    ./run bench query_latency [--events 1000000] [--requests 300] [--data-dir DIR]

Seeding goes through the real ingest code in-process: ``EmbeddedBackend`` with a fixed clock,
a SUM meter with a groupBy created first, then batches of CloudEvents encoded with msgspec,
split and validated by ``split_body`` / ``decode_events`` and appended with
``backend.ledger.append`` (dedupe, meter evaluation, ledger, rollups). Events are spread over
12 months (2025-03-01 .. 2026-03-01 UTC) and 1000 customers, each with an explicit ``time``.
Seeding uses fsync "normal" for speed (durability does not matter for a fixture) and no
late-arrival limit (the default 90-day window would reject the older months).

Then a real ``meterline serve`` runs on that data directory and one customer's month
(cust-42, January 2026) is queried sequentially over one keep-alive connection: once as a
single total (no windowSize) and once per day in America/New_York. The same queries are then
timed in-process (``backend.meters.get`` + ``backend.meters.query``, what the endpoint runs
in its thread pool) to separate the HTTP overhead. Every answer is checked against totals
kept while seeding.

``--data-dir DIR`` keeps the seeded directory and reuses it on the next run when it already
holds ``--events`` events (handy for the 10M case).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import msgspec
from _common import code_version, machine, percentile, start_meterline

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.database import DB_FILE
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.api.meter_query import query_from_params
from meterline.domain.clock import FixedClock, to_us
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.events.model import Outcome, Status
from meterline.domain.meters.model import parse_spec
from meterline.services.aggregation import Aggregator

NAMESPACE = "default"
SLUG = "tokens"
METER = {
    "slug": SLUG,
    "eventType": "prompt",
    "aggregation": "SUM",
    "valueProperty": "$.tokens",
    "groupBy": {"model": "$.model"},
}
MODELS = ("gpt-4o", "claude-3-5", "llama-3-70b")
CUSTOMERS = 1000
SEED_FROM = datetime(2025, 3, 1, tzinfo=UTC)
SEED_TO = datetime(2026, 3, 1, tzinfo=UTC)
MONTH = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
SUBJECT = "cust-42"
CASES = {
    "month total": {},
    "month by DAY, America/New_York": {"windowSize": "DAY", "windowTimeZone": "America/New_York"},
}

_encode = msgspec.json.Encoder().encode


class Expected:
    """What the answers must be, kept while seeding: per day (New York) and in total."""

    def __init__(self) -> None:
        self.total = 0
        self.count = 0
        self.by_day: dict[str, int] = {}


def seed(data_dir: Path, n: int, batch: int, inflight: int, profile: bool) -> Expected:
    start_us, end_us = to_us(SEED_FROM), to_us(SEED_TO)
    month_us = (to_us(MONTH[0]), to_us(MONTH[1]))
    clock = FixedClock(end_us)
    limits = Limits(max_events=batch, future_skew_us=300_000_000, late_window_us=None)
    settings = IngestSettings(dedupe_window_us=None, max_group_cardinality=1000)
    backend = EmbeddedBackend(data_dir, settings, clock, fsync="normal")
    expected = Expected()
    rng = random.Random(42)
    ny = ZoneInfo("America/New_York")
    main_prof = cProfile.Profile() if profile else None
    writer_prof = cProfile.Profile() if profile else None
    try:
        backend.meters.create(NAMESPACE, parse_spec(METER))
        if writer_prof is not None and main_prof is not None:
            backend.db.writer.call(lambda conn: writer_prof.enable())  # profiles the writer thread itself
            main_prof.enable()
        pending: list[Future[list[Outcome]]] = []
        accepted = 0
        step = (end_us - start_us) / n
        started = time.perf_counter()
        next_report = started + 10
        for first in range(0, n, batch):
            events = []
            for i in range(first, min(first + batch, n)):
                t_us = start_us + int(i * step) + rng.randrange(0, max(1, int(step)))
                customer = rng.randrange(CUSTOMERS)
                tokens = rng.randrange(1, 4000)
                events.append(
                    {
                        "specversion": "1.0",
                        "id": f"seed-{i}",
                        "source": "bench-seed",
                        "type": "prompt",
                        "subject": f"cust-{customer}",
                        "time": datetime.fromtimestamp(t_us / 1e6, UTC),
                        "data": {"tokens": tokens, "model": MODELS[i % 3]},
                    }
                )
                if customer == 42 and month_us[0] <= t_us < month_us[1]:
                    expected.total += tokens
                    expected.count += 1
                    day = datetime.fromtimestamp(t_us / 1e6, ny).date().isoformat()
                    expected.by_day[day] = expected.by_day.get(day, 0) + tokens
            body = _encode(events)
            raws = split_body(body, "batch", batch)
            candidates = decode_events(raws, NAMESPACE, clock.now_us(), limits)
            pending.append(backend.ledger.append(NAMESPACE, candidates))
            while len(pending) >= inflight:
                accepted += _accepted(pending.pop(0).result())
            now = time.perf_counter()
            if now >= next_report:
                done = first + batch
                print(f"  seeded {done:>11,} / {n:,}  ({done / (now - started):,.0f} events/s)", flush=True)
                next_report = now + 10
        for f in pending:
            accepted += _accepted(f.result())
        elapsed = time.perf_counter() - started
        Aggregator(backend.ledger, backend.usage, cap=1000).drain()  # rollups, as the server's aggregator keeps them
        if writer_prof is not None and main_prof is not None:
            main_prof.disable()
            backend.db.writer.call(lambda conn: writer_prof.disable())
    finally:
        backend.close()
    print(
        f"seeded {accepted:,} events in {elapsed:.1f} s: {accepted / elapsed:,.0f} events/s"
        f" (batches of {batch}, fsync=normal, in-process, {inflight} batches in flight)"
    )
    if accepted != n:
        sys.exit(f"only {accepted:,} of {n:,} events were accepted")
    if writer_prof is not None and main_prof is not None:
        for name, prof in (("main thread (encode + decode)", main_prof), ("writer thread", writer_prof)):
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
            print(f"\nprofile of the {name}, by own time:\n" + _trim(out.getvalue()))
    return expected


def _accepted(outcomes: list[Outcome]) -> int:
    bad = [o for o in outcomes if o.status is not Status.ACCEPTED]
    if bad:
        sys.exit(f"seeding: {len(bad)} events not accepted, first: {bad[0]}")
    return len(outcomes)


def _trim(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:]).rstrip()


Stats = dict[str, float]


def stats_ms(samples: list[float]) -> Stats:
    s = sorted(x * 1000 for x in samples)
    return {
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "mean": statistics.fmean(s),
        "max": s[-1],
        "n": len(s),
    }


def timed(fn: Callable[[], object], warmup: int, requests: int) -> Stats:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(requests):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return stats_ms(samples)


def params(extra: dict[str, str]) -> dict[str, str]:
    return {
        "subject": SUBJECT,
        "from": MONTH[0].strftime("%Y-%m-%dT%H:%M:%SZ"),
        "to": MONTH[1].strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


def check(case: str, data: list[dict[str, object]], expected: Expected) -> None:
    if case == "month total":
        got = [Decimal(str(r["value"])) for r in data]
        assert got == [Decimal(expected.total)], f"{case}: {got} != {expected.total}"
    else:
        ny = ZoneInfo("America/New_York")
        got_days = {
            datetime.fromisoformat(str(r["windowStart"]).replace("Z", "+00:00")).astimezone(ny).date().isoformat(): (
                Decimal(str(r["value"]))
            )
            for r in data
        }
        want = {day: Decimal(v) for day, v in expected.by_day.items()}
        assert got_days == want, f"{case}: per-day sums differ from the seeded data"


def measure_http(data_dir: Path, log: Path, expected: Expected, warmup: int, requests: int) -> dict[str, Stats]:
    server = start_meterline(data_dir, log)
    out: dict[str, Stats] = {}
    try:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
            path = f"/api/v1/meters/{SLUG}/query"
            for case, extra in CASES.items():
                p = params(extra)
                r = client.get(path, params=p)
                r.raise_for_status()
                check(case, r.json()["data"], expected)
                out[case] = timed(lambda p=p: client.get(path, params=p).raise_for_status(), warmup, requests)
            if shutil.which("wrk"):
                for case, extra in CASES.items():
                    out[f"{case} [wrk -c1]"] = wrk_latency(server.url + path, server.key, params(extra), log.parent)
            out["GET /healthz (HTTP floor)"] = timed(
                lambda: client.get("/healthz").raise_for_status(), warmup, requests
            )
    finally:
        server.stop()
    return out


WRK_LUA = """
wrk.headers["Authorization"] = "Bearer __KEY__"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d bad=%d p50=%d p90=%d p99=%d max=%d mean=%d\\n",
    summary.requests, e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_latency(url: str, key: str, query: dict[str, str], work: Path, seconds: int = 5) -> Stats:
    """The same query from wrk (a C client, one connection, back to back): less client overhead."""
    script = work / "query.lua"
    script.write_text(WRK_LUA.replace("__KEY__", key))
    target = str(httpx.URL(url, params=query))
    cmd = ["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", "-s", str(script), target]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed:\n{out.stdout}\n{out.stderr}")
    v = {k: int(x) for k, x in (f.split("=") for f in line.split()[1:])}
    if v["bad"]:
        raise RuntimeError(f"wrk saw {v['bad']} failed requests for {target}")
    return {k: v[k] / 1000 for k in ("p50", "p90", "p99", "mean", "max")} | {"n": v["requests"]}


def measure_in_process(data_dir: Path, expected: Expected, warmup: int, requests: int) -> dict[str, Stats]:
    settings = IngestSettings(dedupe_window_us=None, max_group_cardinality=1000)
    backend = EmbeddedBackend(data_dir, settings, FixedClock(to_us(SEED_TO)), fsync="normal")
    out: dict[str, Stats] = {}
    try:
        for case, extra in CASES.items():
            query = query_from_params(list(params(extra).items()))

            def run(query: object = query) -> object:
                meter = backend.meters.get(NAMESPACE, SLUG)
                return backend.meters.query(meter, query)  # type: ignore[arg-type]

            rows = run()
            assert isinstance(rows, list)
            if case == "month total":
                assert [r.value for r in rows] == [Decimal(expected.total)], case
            out[case] = timed(run, warmup, requests)
    finally:
        backend.close()
    return out


def ledger_size(data_dir: Path) -> int:
    import sqlite3

    db = data_dir / DB_FILE
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def expected_from_store(data_dir: Path) -> Expected:
    """Totals for a reused data directory, recomputed from the ledger."""
    import sqlite3

    ny = ZoneInfo("America/New_York")
    conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT time_us, raw ->> '$.data.tokens' FROM events WHERE subject = ? AND time_us >= ? AND time_us < ?",
        (SUBJECT, to_us(MONTH[0]), to_us(MONTH[1])),
    ).fetchall()
    conn.close()
    e = Expected()
    for t_us, tokens in rows:
        e.total += int(tokens)
        e.count += 1
        day = datetime.fromtimestamp(t_us / 1e6, ny).date().isoformat()
        e.by_day[day] = e.by_day.get(day, 0) + int(tokens)
    return e


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to seed (default 1000000)")
    parser.add_argument("--batch", type=int, default=5000, help="events per append while seeding (default 5000)")
    parser.add_argument("--inflight", type=int, default=2, help="appends queued at once while seeding (default 2)")
    parser.add_argument("--requests", type=int, default=300, help="timed queries per case (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed queries first (default 20)")
    parser.add_argument("--data-dir", type=Path, help="keep the seeded data here and reuse it when it matches")
    parser.add_argument("--profile", action="store_true", help="cProfile the seeding (main and writer threads)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"code: {code_version()}")
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.mkdtemp(prefix="meterline-bench-")
        data_dir = Path(tmp) / "data"
    else:
        data_dir = args.data_dir
    try:
        have = ledger_size(data_dir)
        if have == args.events:
            print(f"reusing {data_dir.name}: {have:,} events already seeded")
            expected = expected_from_store(data_dir)
        elif have:
            sys.exit(f"{data_dir} holds {have:,} events, not {args.events:,}; use another --data-dir")
        else:
            expected = seed(data_dir, args.events, args.batch, args.inflight, args.profile)
        size = sum(f.stat().st_size for f in data_dir.iterdir()) / 1e9
        print(f"database: {size:.2f} GB; {SUBJECT} in January 2026: {expected.count:,} events, SUM {expected.total:,}")
        log = (Path(tmp) if tmp else data_dir) / "serve.log"
        http = measure_http(data_dir, log, expected, args.warmup, args.requests)
        local = measure_in_process(data_dir, expected, args.warmup, args.requests)
        n = args.events
        print(
            f"\nQuery latency, {n:,} events, {SUBJECT}, {MONTH[0]:%Y-%m-%d} .. {MONTH[1]:%Y-%m-%d},"
            f" {args.requests} sequential requests after {args.warmup} warm-up (ms)"
        )
        print(f"{'case':<32}{'measured by':<24}{'n':>6}{'p50':>8}{'p90':>8}{'p99':>8}{'mean':>8}{'max':>8}")
        rows: list[tuple[str, str, Stats | None]] = []
        for case in CASES:
            rows.append((case, "HTTP, httpx keep-alive", http.get(case)))
            rows.append((case, "HTTP, wrk -t1 -c1 5 s", http.get(f"{case} [wrk -c1]")))
            rows.append((case, "in-process (no HTTP)", local.get(case)))
        rows.append(("GET /healthz (HTTP floor)", "HTTP, httpx keep-alive", http.get("GET /healthz (HTTP floor)")))
        for case, where, st in rows:
            if st is not None:
                print(
                    f"{case:<32}{where:<24}{st['n']:>6.0f}{st['p50']:>8.3f}{st['p90']:>8.3f}{st['p99']:>8.3f}"
                    f"{st['mean']:>8.3f}{st['max']:>8.3f}"
                )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
