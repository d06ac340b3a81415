"""Scale mode through real processes on the local stack: 1 API node + 1 sink worker, then 2 + 2.

    ./run bench scale_stack [--duration 30] [--shapes 1000,100,1] [--subjects 10000]

Starts its own stack (Tansu, the chdb-backed ClickHouse endpoint, PostgreSQL, Redis; see
docs/scale.md) on free 127.0.0.1 ports and stops it at the end. For each deployment shape, in a
site of its own (topic with 4 partitions, ClickHouse database, PostgreSQL schema), with real
``meterline serve`` and ``meterline worker`` processes:

1. one event is sent and awaited until counted (the workers have joined their group);
2. for ``--duration`` seconds, one sending thread per entry of ``--shapes`` posts requests of that
   many events (UUIDv4 ids, ``--subjects`` customers picked at random, a SUM value per event)
   round-robin over the nodes; a request answered 503 is re-sent as is (retries are safe), and
   every 20th batch request is re-sent once more after its 2xx, asking for the per-event report:
   every event must come back a duplicate. Meanwhile a probe thread sends one event at a time
   for a customer of its own and measures the lag from its 2xx until it is queryable: odd
   probes by polling an ``eventual`` query through another node every 10 ms, even ones by one
   ``strong`` query through the node that acknowledged it (which waits until the workers applied
   what that node acknowledged);
3. reported: acknowledged events/s, worker-applied events/s (rows of the raw table over the
   same window), request latency per shape, the probes' lag, CPU seconds per 1000 events of each
   kind of process (``/proc`` of the nodes, workers, Tansu, the ClickHouse endpoint, the
   PostgreSQL cluster, Redis, and this load generator), and the whole machine's busy CPU and load
   average over the window (the cores are shared with whatever else runs);
4. the backlog is drained (bounded by ``--drain-timeout``), and exactness checked: the COUNT
   meter's total, the SUM meter's total and every customer's count (``groupBy=subject``) equal
   what the client was acknowledged, and the raw table holds each acknowledged id once.

Bounded: each phase stops by itself; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import code_version, percentile  # noqa: E402
from scale_site import Site, site  # noqa: E402
from stack import launch  # noqa: E402

from meterline.adapters.clickhouse.client import Connection  # noqa: E402

EXTRA = """
[aggregation]
chunk = 20000
max_wait = 60.0
[billing]
scheduler_enabled = false

[[meters]]
slug = "prompts"
event_type = "prompt"
aggregation = "COUNT"

[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
group_by = { model = "$.model" }
"""
RANGE = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
BATCH = "application/cloudevents-batch+json"
SINGLE = "application/cloudevents+json"
_TICK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting from /proc -----------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds used so far by ``roots`` and their live descendants (children that exited and
    were reaped are in their parent's own figure only when waited for, so long-lived processes
    are what this measures)."""
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (s := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / _TICK, sum(ticks) / _TICK


def kinds(stack: launch.Stack, s: Site, nodes: list[int], workers: list[int]) -> dict[str, list[int]]:
    postmaster = int(Path(stack.pg_data, "postmaster.pid").read_text().split()[0])
    return {
        "API nodes": nodes,
        "workers": workers,
        "Kafka (Tansu)": [stack.pids["tansu"]],
        "ClickHouse (chdb endpoint)": [stack.pids["clickhouse"]],
        "PostgreSQL": [postmaster],
        "Redis": [stack.pids["redis"]],
        "load generator": [os.getpid()],
    }


def cpu_now(groups: dict[str, list[int]]) -> dict[str, float]:
    out = {}
    for name, pids in groups.items():
        out[name] = os.times().user + os.times().system if pids == [os.getpid()] else tree_cpu(pids)
    return out


# -- load --------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the client was acknowledged (every 2xx), per sending thread."""

    events: int = 0
    tokens: Decimal = Decimal(0)
    per_subject: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    retries: int = 0
    resent: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, events: list[dict[str, Any]]) -> None:
        self.events += len(events)
        for e in events:
            self.tokens += Decimal(e["data"]["tokens"])
            self.per_subject[e["subject"]] += 1


def events_of(n: int, subjects: int, rng: random.Random) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return [
        {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "bench", "type": "prompt",
         "subject": f"c{rng.randrange(subjects)}", "time": now,
         "data": {"tokens": rng.randrange(1, 1000), "model": f"m{rng.randrange(4)}"}}
        for _ in range(n)
    ]  # fmt: skip


def post(
    client: httpx.Client, url: str, body: bytes, media: str, key: str, tally: Tally, report: bool = False
) -> httpx.Response:
    """POST until the answer is not a 503 (the ack path's retryable answer; re-sending is safe)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": media}
    if report:
        headers["Prefer"] = "return=representation"
    for attempt in range(20):
        r = client.post(f"{url}/api/v1/events", content=body, headers=headers)
        if r.status_code != 503:
            return r
        tally.retries += 1
        time.sleep(min(0.05 * 2**attempt, 1.0))
    return r


def sender(urls: list[str], key: str, size: int, subjects: int, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    n = 0
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            events = events_of(size, subjects, rng)
            body = msgspec.json.encode(events[0] if size == 1 else events)
            media = SINGLE if size == 1 else BATCH
            url = urls[n % len(urls)]
            n += 1
            started = time.perf_counter()
            r = post(client, url, body, media, key, tally)
            if r.status_code != 204:
                tally.errors.append(f"{r.status_code} {r.text[:200]}")
                continue
            tally.latencies.append(time.perf_counter() - started)
            tally.add(events)
            if size > 1 and n % 20 == 0:  # the same request again, through another node: all duplicates
                again = post(client, urls[n % len(urls)], body, media, key, tally, report=True)
                report = again.json() if again.status_code == 200 else {}
                if report.get("duplicates") != size or report.get("accepted") != 0:
                    tally.errors.append(f"re-sent batch: {again.status_code} {again.text[:200]}")
                tally.resent += size


def query(client: httpx.Client, url: str, key: str, **params: str) -> httpx.Response:
    return client.get(f"{url}/api/v1/meters/{params.pop('meter', 'prompts')}/query",
                      params={**RANGE, **params}, headers={"Authorization": f"Bearer {key}"})  # fmt: skip


def counted(client: httpx.Client, url: str, key: str, **params: str) -> Decimal:
    r = query(client, url, key, **params)
    r.raise_for_status()
    return sum((Decimal(str(row["value"])) for row in r.json()["data"]), Decimal(0))


class Probes:
    """Single events of a customer of their own, acknowledged one after another (so they sit in
    one partition in that order), and when each became queryable."""

    def __init__(self, urls: list[str], key: str) -> None:
        self.urls, self.key = urls, key
        self.tally = Tally()
        self.acked: list[float] = []
        self.lags: dict[str, list[float]] = {"eventual": [], "strong": []}
        self.stale = 0
        """Strong reads answered when ``aggregation.max_wait`` ran out, before the probe applied."""
        self._lock = threading.Lock()

    def send(self, stop: threading.Event, every: float) -> None:
        """Every ``every`` seconds one probe; every 5th also read back at once with a ``strong``
        query through the node that acknowledged it (it waits for the workers)."""
        rng = random.Random(7)
        with httpx.Client(timeout=120) as client:
            i = 0
            while not stop.is_set():
                event = events_of(1, 1, rng)[0]
                event["subject"] = "probe"
                node = self.urls[i % len(self.urls)]
                r = post(client, node, msgspec.json.encode(event), SINGLE, self.key, self.tally)
                acked = time.perf_counter()
                if r.status_code != 204:
                    self.tally.errors.append(f"probe {r.status_code} {r.text[:200]}")
                    continue
                with self._lock:
                    self.tally.add([event])
                    self.acked.append(acked)
                    want = len(self.acked)
                if i % 5 == 0:
                    have = counted(client, node, self.key, subject="probe", consistency="strong")
                    if have < want:  # aggregation.max_wait passed first: answered with what was applied
                        self.stale += 1
                    self.lags["strong"].append(time.perf_counter() - acked)
                i += 1
                stop.wait(every)

    def watch(self, stop: threading.Event, timeout: float) -> None:
        """Poll an ``eventual`` count through the last node every 10 ms: probe k is queryable once
        the count reaches k. Runs until ``stop`` and every probe is seen (or ``timeout`` after)."""
        seen = 0
        deadline = None
        with httpx.Client(timeout=120) as client:
            while True:
                with self._lock:
                    pending = self.acked[seen:]
                if stop.is_set():
                    deadline = deadline or time.perf_counter() + timeout
                    if not pending or time.perf_counter() > deadline:
                        return
                if pending:
                    have = int(counted(client, self.urls[-1], self.key, subject="probe", consistency="eventual"))
                    now = time.perf_counter()
                    while seen < min(have, seen + len(pending)):
                        self.lags["eventual"].append(now - self.acked[seen])
                        seen += 1
                time.sleep(0.01)


# -- one deployment shape ----------------------------------------------------------------------


def raw_rows(conn: Connection) -> int:
    return int(conn.rows("SELECT count() FROM events")[0][0])


def run_shape(stack: launch.Stack, root: Path, nodes: int, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    shapes = [int(v) for v in args.shapes.split(",")]
    with site(stack, root, partitions=4, extra=EXTRA) as s:
        worker_procs = [s.worker() for _ in range(workers)]
        urls, node_procs = [], []
        for _ in range(nodes):
            port = launch.free_port()
            node_procs.append(s.node(port))
            urls.append(f"http://127.0.0.1:{port}")
        key = s.key("default")
        config = s.config
        conn = Connection(config.clickhouse.url, config.clickhouse.database)
        warm = Tally()
        with httpx.Client(timeout=120) as client:  # the workers have joined their group once it counts
            first = events_of(1, 1, random.Random(1))
            r = post(client, urls[0], msgspec.json.encode(first[0]), SINGLE, key, warm)
            assert r.status_code == 204, r.text
            warm.add(first)
            deadline = time.monotonic() + 120
            while counted(client, urls[0], key, consistency="eventual") < 1:
                if time.monotonic() > deadline:
                    raise SystemExit(f"workers did not count the first event: {s.log_tail('workers.log')}")
                time.sleep(0.05)
        groups = kinds(stack, s, [p.pid for p in node_procs], [p.pid for p in worker_procs])
        tallies = [Tally() for _ in shapes]
        probes = Probes(urls, key)
        stop = threading.Event()
        threads = [threading.Thread(target=sender, args=(urls, key, size, args.subjects, stop, t, 100 + i))
                   for i, (size, t) in enumerate(zip(shapes, tallies, strict=True))]  # fmt: skip
        prober = threading.Thread(target=probes.send, args=(stop, 0.2))
        watcher = threading.Thread(target=probes.watch, args=(stop, args.drain_timeout))
        load0, cpu0, busy0, applied0 = os.getloadavg()[0], cpu_now(groups), machine_busy(), raw_rows(conn)
        started = time.perf_counter()
        for t in [*threads, prober, watcher]:
            t.start()
        stop.wait(args.duration)  # the measured window
        stop.set()
        for t in threads:  # each finishes its request in flight; a strong probe may wait longer
            t.join()
        window = time.perf_counter() - started
        load1, cpu1, busy1, applied1 = os.getloadavg()[0], cpu_now(groups), machine_busy(), raw_rows(conn)
        window_acked = sum(t.events for t in [probes.tally, *tallies])
        prober.join()  # its last probe is acknowledged (a strong read of it waits for the workers)
        everyone = [warm, probes.tally, *tallies]
        acked = sum(t.events for t in everyone)
        deadline = time.perf_counter() + args.drain_timeout
        while raw_rows(conn) < acked and time.perf_counter() < deadline:
            time.sleep(0.1)
        drain = time.perf_counter() - started - window
        cpu2, busy2 = cpu_now(groups), machine_busy()
        watcher.join()
        idle = idle_lag(urls, key, warm, args.idle_probes)
        checks = exactness(urls, key, conn, everyone)
        conn.close()
    return {
        "window": window, "acked": window_acked, "applied": applied1 - applied0,
        "backlog": window_acked + warm.events - applied1,
        "drain": drain, "cpu": {k: cpu1[k] - cpu0[k] for k in cpu0}, "cpu_all": {k: cpu2[k] - cpu0[k] for k in cpu0},
        "busy": busy1[0] - busy0[0], "capacity": busy1[1] - busy0[1], "busy_all": busy2[0] - busy0[0],
        "load": (load0, load1), "shapes": shapes, "tallies": tallies, "lags": {**probes.lags, "idle": idle},
        "stale": probes.stale,
        "checks": checks, "errors": [e for t in everyone for e in t.errors],
        "retries": sum(t.retries for t in everyone), "resent": sum(t.resent for t in everyone),
    }  # fmt: skip


def idle_lag(urls: list[str], key: str, tally: Tally, n: int) -> list[float]:
    """With no load: ``n`` single events of one customer, one at a time, each polled (10 ms) until
    an eventual query through another node counts it."""
    lags = []
    rng = random.Random(9)
    with httpx.Client(timeout=120) as client:
        for i in range(n):
            event = events_of(1, 1, rng)[0]
            event["subject"] = "idle-probe"
            r = post(client, urls[i % len(urls)], msgspec.json.encode(event), SINGLE, key, tally)
            acked = time.perf_counter()
            if r.status_code != 204:
                tally.errors.append(f"idle probe {r.status_code} {r.text[:200]}")
                continue
            tally.add([event])
            deadline = acked + 60
            while counted(client, urls[-1 - i % len(urls)], key, subject="idle-probe", consistency="eventual") <= i:
                if time.perf_counter() > deadline:
                    tally.errors.append("idle probe not queryable within 60 s")
                    break
                time.sleep(0.01)
            lags.append(time.perf_counter() - acked)
    return lags


def exactness(urls: list[str], key: str, conn: Connection, tallies: list[Tally]) -> list[str]:
    """What disagrees with the acknowledged events (empty: every acknowledged event counted once)."""
    acked = sum(t.events for t in tallies)
    tokens = sum((t.tokens for t in tallies), Decimal(0))
    per_subject: Counter[str] = Counter()
    for t in tallies:
        per_subject.update(t.per_subject)
    wrong = []
    with httpx.Client(timeout=120) as client:
        deadline = time.monotonic() + 120
        while (count := counted(client, urls[0], key, consistency="eventual")) != acked:
            if time.monotonic() > deadline:
                wrong.append(f"COUNT meter total {count} != {acked} acknowledged")
                break
            time.sleep(0.2)
        total = counted(client, urls[-1], key, meter="tokens", consistency="eventual")
        if total != tokens:
            wrong.append(f"SUM meter total {total} != {tokens} acknowledged")
        r = query(client, urls[-1], key, groupBy="subject", consistency="eventual")
        r.raise_for_status()
        seen = {row["subject"]: int(row["value"]) for row in r.json()["data"] if row["value"]}
        if seen != dict(per_subject):
            diff = {s: (seen.get(s), n) for s, n in per_subject.items() if seen.get(s) != n}
            wrong.append(f"{len(diff)} customers' counts differ, e.g. {list(diff.items())[:3]}")
    rows, ids = conn.rows("SELECT count(), uniqExact(id) FROM events")[0]
    if rows != acked or ids != acked:
        wrong.append(f"raw table: {rows} rows, {ids} distinct ids, {acked} acknowledged")
    return wrong


def ms(values: list[float], p: float) -> str:
    return f"{percentile(sorted(values), p) * 1000:.0f}" if values else "-"


def report(nodes: int, workers: int, r: dict[str, Any]) -> None:
    window = float(r["window"])
    acked, applied = int(r["acked"]), int(r["applied"])
    print(f"\n== {nodes} API node(s) + {workers} worker(s), {window:.1f} s window ==")
    print(f"acknowledged {acked / window:,.0f} events/s ({acked:,} events; {r['retries']} retried requests,"
          f" {r['resent']:,} events re-sent as duplicates)")  # fmt: skip
    print(f"worker-applied {applied / window:,.0f} events/s in the window; backlog at its end {r['backlog']:,},"
          f" drained in {r['drain']:.1f} s")  # fmt: skip
    for size, t in zip(r["shapes"], r["tallies"], strict=True):
        print(f"  requests of {size:>4} event(s): {len(t.latencies):,} acknowledged, {t.events / window:,.0f} events/s,"
              f" latency p50 {ms(t.latencies, 50)} ms, p99 {ms(t.latencies, 99)} ms")  # fmt: skip
    lags = r["lags"]
    for how, what in (("eventual", "under load, eventual read polled through another node"),
                      ("strong", "under load, one strong read through the acknowledging node"),
                      ("idle", "no other load, eventual read polled through another node")):  # fmt: skip
        v = lags[how]
        stale = f"; {r['stale']} answered at max_wait (60 s) before it" if how == "strong" else ""
        print(f"ack to queryable, {what} ({len(v)} probes): p50 {ms(v, 50)} ms, p99 {ms(v, 99)} ms,"
              f" max {ms(v, 100)} ms{stale}")  # fmt: skip
    cpu: dict[str, float] = r["cpu"]
    ours = sum(cpu.values())
    busy, capacity = float(r["busy"]), float(r["capacity"])
    load = r["load"]
    print(f"machine: {busy / window:.2f} of {capacity / window:.2f} cores busy; these processes used"
          f" {ours / window:.2f}, everything else {max(busy - ours, 0) / window:.2f};"
          f" load average {load[0]:.1f} -> {load[1]:.1f}")  # fmt: skip
    cpu_all: dict[str, float] = r["cpu_all"]
    print(f"CPU per kind: cores used in the window; CPU per event from the window's start until the backlog was"
          f" applied ({acked:,} events acknowledged and applied; {float(r['busy_all']) - sum(cpu_all.values()):.1f}"
          f" CPU s used by everything else meanwhile)")  # fmt: skip
    for name, seconds in cpu.items():
        print(f"  {name:<28} {seconds / window:5.2f} cores, {cpu_all[name] / max(acked, 1) * 1e6:7.1f} µs per event")
    errors: list[str] = r["errors"]
    checks: list[str] = r["checks"]
    print("exactness: every acknowledged event counted once" if not checks else f"EXACTNESS FAILED: {checks}")
    if errors:
        print(f"ERRORS ({len(errors)}): {errors[:5]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per shape")
    parser.add_argument("--shapes", default="1000,100,1", help="events per request, one sending thread each")
    parser.add_argument("--subjects", type=int, default=10_000, help="customers the events are spread over")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--deployments", default="1x1,2x2", help="API nodes x workers, in order")
    parser.add_argument("--idle-probes", type=int, default=20, help="lag probes after the load")
    args = parser.parse_args()
    print(f"code {code_version()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = launch.up(Path(tmp) / "engines")
        try:
            for shape in args.deployments.split(","):
                nodes, workers = (int(v) for v in shape.split("x"))
                r = run_shape(stack, Path(tmp) / f"site-{shape}", nodes, workers, args)
                report(nodes, workers, r)
                results.append((shape, r))
        finally:
            launch.down(Path(tmp) / "engines")
    if len(results) == 2:
        (a, ra), (b, rb) = results
        ack = (rb["acked"] / rb["window"]) / (ra["acked"] / ra["window"])
        applied = (rb["applied"] / rb["window"]) / max(ra["applied"] / ra["window"], 1e-9)
        print(f"\n{a} -> {b}: acknowledged x{ack:.2f}, worker-applied x{applied:.2f}")


if __name__ == "__main__":
    main()
