"""Helpers shared by the benchmarks: keys, real server processes, CPU accounting, statistics.

Everything listens on 127.0.0.1 only. Servers are started as child processes and always
stopped by the benchmark that started them (by their own process object, never by name).
"""

from __future__ import annotations

import math
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from meterline.adapters.sqlite.database import DB_FILE
from meterline.adapters.sqlite.keys import create_key
from meterline.adapters.sqlite.schema import connect, create_schema
from meterline.domain.auth.keys import parse_scopes

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_key(data_dir: Path, scopes: Sequence[str] = ("admin",), namespace: str = "default") -> str:
    """An API key written straight into the data directory's database (as tests/conftest.py does)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(data_dir / DB_FILE)
    create_schema(conn)
    _, secret = create_key(conn, namespace, "benchmark", parse_scopes(list(scopes)), time.time_ns() // 1000)
    conn.close()
    return secret


@dataclass
class Server:
    """A server child process on 127.0.0.1."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    key: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn(name: str, args: list[str], log_path: Path, env: dict[str, str], port: int) -> Server:
    log = log_path.open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    log.close()
    return Server(name, f"http://{HOST}:{port}", process, log_path)


def start_meterline(
    data_dir: Path, log_path: Path, env: dict[str, str] | None = None, name: str = "meterline"
) -> Server:
    """``meterline serve`` on a free port with an admin key; storage settings are the defaults
    (fsync "full") unless ``env`` overrides them."""
    key = make_key(data_dir)
    port = free_port()
    server = _spawn(
        name,
        [sys.executable, "-m", "meterline.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        log_path,
        {"METERLINE_LOG__LEVEL": "WARNING", **(env or {})},
        port,
    )
    server.key = key
    server.headers = {"Authorization": f"Bearer {key}"}
    wait_ready(server)
    return server


def start_noop(data_dir: Path, log_path: Path, env: dict[str, str] | None = None, name: str = "noop") -> Server:
    """The no-op ceiling (benchmarks/noop_app.py: meterline's own server, a ledger that stores
    nothing) on a free port, with an admin key in ``data_dir``."""
    key = make_key(data_dir)
    port = free_port()
    args = [sys.executable, str(HERE / "noop_app.py"), "--data-dir", str(data_dir), "--port", str(port)]
    server = _spawn(name, args, log_path, {"METERLINE_LOG__LEVEL": "WARNING", **(env or {})}, port)
    server.key = key
    server.headers = {"Authorization": f"Bearer {key}"}
    wait_ready(server)
    return server


def wait_ready(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{server.name} did not become ready:\n{server.log_tail()}")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each thread of a process, by thread id."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return out


def cpu_split(pid: int, before: dict[int, float], after: dict[int, float]) -> tuple[float, float, float]:
    """(main thread, busiest other thread, all threads) CPU seconds between two snapshots."""
    deltas = {tid: t - before.get(tid, 0.0) for tid, t in after.items()}
    main = deltas.get(pid, 0.0)
    others = [d for tid, d in deltas.items() if tid != pid]
    return main, max(others, default=0.0), sum(deltas.values())


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def code_version() -> str:
    """Which meterline is measured: the commit of this checkout and whether src/ has edits."""
    import meterline

    here = HERE.parent
    if not Path(meterline.__file__).resolve().is_relative_to(here / "src"):
        return "meterline imported from outside this checkout (PYTHONPATH?)"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "meterline from this checkout (git not available)"
    return f"meterline at commit {head}" + (" + uncommitted changes in src/" if dirty else "")


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({model or platform.machine()}), Python {platform.python_version()},"
        f" SQLite {sqlite3.sqlite_version}, load average {load}"
    )
