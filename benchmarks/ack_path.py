"""The in-process ack path, this checkout against an older one, taking turns.

    ./run bench ack_path --baseline OLD/src [--events 200000] [--rounds 3] [--fsync full]
    ./run bench ack_path --ingested-bytes [--events 200000] [--rounds 3]

What a 204 costs without HTTP: ``EmbeddedBackend`` + ``ledger.append`` of already decoded
requests (decoding is the same in both codes and is done before the clock starts), one SUM
meter grouped by region, UUIDv4 ids over 1,000 subjects. Two cases per turn:

- ``1000 x 1``: one thread appends 1000-event requests;
- ``1 x 16``: 16 threads append single-event requests (group commit gathers them).

With ``--ingested-bytes`` this checkout runs each case twice, taking turns: without and with
the built-in meter ``ingested_bytes`` (``[metering] ingested_bytes``, docs/meters.md), whose
ack-path cost is measuring each accepted event's canonical JSON.

Each case runs in a fresh process on a fresh data directory (``PYTHONPATH`` points at the
code under test), so the two codes take turns on the same machine within one run. Printed per
turn: events/s (wall) and the process CPU per event. Also printed: the cost of the hash chain
alone per event (the content digest the code appends with, format 2 where it has it, + ``link``
over the same events), when the code has it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import code_version, machine

HERE = Path(__file__).resolve().parent
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1", "sa-east-1")


def _bodies(n: int, size: int) -> list[bytes]:
    out = []
    for start in range(0, n, size):
        events: list[dict[str, Any]] = []
        for i in range(start, min(start + size, n)):
            h = os.urandom(16).hex()
            events.append(
                {
                    "specversion": "1.0",
                    "id": f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:]}",
                    "source": "bench",
                    "type": "t",
                    "subject": f"c{i % 1000}",
                    "time": "2026-03-01T11:00:00Z",
                    "data": {"v": i % 97, "region": REGIONS[i % 4]},
                }
            )
        out.append(json.dumps(events).encode())
    return out


def run_case(events: int, size: int, threads: int, fsync: str, ingested_bytes: bool = False) -> dict[str, Any]:
    """In this process (``--worker``): one case on a fresh data directory."""
    from meterline.adapters.sqlite.backend import EmbeddedBackend
    from meterline.adapters.sqlite.ingest import IngestSettings
    from meterline.domain.clock import SystemClock
    from meterline.domain.events.decode import Limits, decode_events, split_body
    from meterline.domain.meters.model import Aggregation, MeterSpec

    now = SystemClock().now_us()
    limits = Limits(10_000, 300_000_000, None)
    requests = [decode_events(split_body(b, "batch", 10_000), "default", now, limits) for b in _bodies(events, size)]
    with tempfile.TemporaryDirectory() as tmp:
        b = EmbeddedBackend(Path(tmp), IngestSettings(None, 1000), SystemClock(), fsync=fsync)
        spec = MeterSpec(
            slug="n", event_type="t", aggregation=Aggregation.SUM, value_property="$.v", group_by={"region": "$.region"}
        )
        b.meters.create("default", spec)
        if ingested_bytes:
            b.meters.set_builtins(True)
        share = [requests[i::threads] for i in range(threads)]

        def send(mine: list[Any]) -> None:
            for candidates in mine:
                b.ledger.append("default", candidates).result()

        workers = [threading.Thread(target=send, args=(s,)) for s in share]
        cpu, wall = time.process_time(), time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stored = b.ledger.size()
        b.close()
    assert stored == events, (stored, events)
    return {"events_per_s": events / wall, "cpu_us_per_event": cpu / events * 1e6, "chain_us": _chain_cost(requests)}


def _chain_cost(requests: list[Any]) -> float | None:
    try:
        from meterline.domain.integrity.chain import GENESIS, content_digest, link
    except ImportError:
        return None
    try:  # content format 2 (from entry 1, as this code appends to a new store), when the code has it
        from meterline.domain.integrity.chain import ChainFormat

        v2 = ChainFormat(1).content

        def content(seq: int, e: Any) -> bytes:
            return v2(seq, e.namespace, e.source, e.id, e.type, e.subject, e.time_us, 1, e.digest, e.raw, None)
    except ImportError:

        def content(seq: int, e: Any) -> bytes:
            return content_digest(e.namespace, e.source, e.id, e.type, e.subject, e.time_us, 1, e.digest, e.raw)

    evs = [c.event for r in requests for c in r]
    prev, started = GENESIS, time.perf_counter()
    for seq, e in enumerate(evs, 1):
        prev = link(prev, seq, content(seq, e))
    return (time.perf_counter() - started) / len(evs) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="src/ directory of an older checkout, measured too (taking turns)")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--single-events", type=int, default=20_000, help="events of the 1 x 16 case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fsync", choices=("full", "normal"), default="full")
    parser.add_argument("--ingested-bytes", action="store_true", help="this code without and with ingested_bytes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        events, size, threads, measured = (int(x) for x in args.worker.split(":"))
        print(json.dumps(run_case(events, size, threads, args.fsync, bool(measured))))
        return
    print(f"code: {code_version()}" + (f"; baseline: {args.baseline}" if args.baseline else ""))
    print(machine())
    variants = [("new", str(HERE.parent / "src"), 0)]
    if args.baseline:
        variants.insert(0, ("base", str(Path(args.baseline).resolve()), 0))
    if args.ingested_bytes:
        variants = [("off", str(HERE.parent / "src"), 0), ("on", str(HERE.parent / "src"), 1)]
    cases = [(args.events, 1000, 1), (args.single_events, 1, 16)]
    for rnd in range(1, args.rounds + 1):
        for events, size, threads in cases:
            for name, src, measured in variants:
                env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{HERE}"}
                worker = f"{events}:{size}:{threads}:{measured}"
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", worker, "--fsync", args.fsync],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout)
                chain = "" if r["chain_us"] is None else f"  chain alone {r['chain_us']:.2f} µs/event"
                print(
                    f"round {rnd}  {size:>4} x {threads:<2}  {name:4}  {r['events_per_s']:>9,.0f} events/s"
                    f"  CPU {r['cpu_us_per_event']:6.1f} µs/event{chain}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
