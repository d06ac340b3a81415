"""Start-up time of the ``meterline`` command: ``--help`` and commands that talk to a server.

    ./run bench cli_startup                       # this checkout
    ./run bench cli_startup --baseline OLD/src    # and an older checkout's src/, run alternately

Each case runs ``--runs`` times (after ``--warmup`` runs) in a fresh interpreter, the variants
taking turns run by run so that a busy machine slows them alike. The client commands point at
a closed port, so what is timed is start-up, one refused connection and the error line.
Prints the median and minimum wall time and the median CPU time (user + system) per case:
CPU time is what the import work costs, and moves far less than wall time when other
processes share the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import code_version, free_port, machine

CASES = {
    "--help": ["--help"],
    "meters list": ["meters", "list"],
    "customers list": ["customers", "list"],
    "usage": ["usage", "tokens", "--window-size", "DAY"],
}


def run_once(args: list[str], src: str | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``python -m meterline.cli.main ARGS``."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "meterline.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    _, _, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = 0  # reaped by wait4
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--baseline", help="an older checkout's src/ directory to compare with")
    opts = parser.parse_args()
    url = ["--url", f"http://127.0.0.1:{free_port()}", "--api-key", "k"]
    variants = {"this checkout": None} | ({"baseline": str(Path(opts.baseline).resolve())} if opts.baseline else {})
    print(f"{code_version()}; {machine()}; {opts.runs} runs each")
    print(f"{'case':<16} {'variant':<14} {'median ms':>10} {'min ms':>8} {'CPU ms':>8}")
    for name, args in CASES.items():
        full = args if name == "--help" else [*args, *url]
        for _ in range(opts.warmup):
            for src in variants.values():
                run_once(full, src)
        samples: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(opts.runs):
            for variant, src in variants.items():
                samples[variant].append(run_once(full, src))
        for variant, got in samples.items():
            walls, cpus = [w for w, _ in got], [c for _, c in got]
            print(
                f"{name:<16} {variant:<14} {statistics.median(walls) * 1000:>10.0f} {min(walls) * 1000:>8.0f}"
                f" {statistics.median(cpus) * 1000:>8.0f}"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
