"""Real faults for real server processes: syscall errors injected with strace, a small tmpfs
that fills up, kill -9. Shared by the storage-fault and health tests."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, free_port, make_key, wait_ready

from meterline.adapters.sqlite.database import DB_FILE

BATCH = "application/cloudevents-batch+json"
STARTUP_SECONDS = 90.0  # generous: the suite shares a small machine


def launch(data_dir: Path, log: Path, env: dict[str, str] | None = None) -> Server:
    """``meterline serve`` on ``data_dir`` with an admin key; its JSON log is appended to ``log``."""
    key = make_key(data_dir, ["admin"])
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "meterline.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=out,
            stderr=out,
            env={**os.environ, **(env or {})},
        )
    server = Server(f"http://127.0.0.1:{port}", key, data_dir, process, port)
    try:
        wait_ready(server, STARTUP_SECONDS)
    except BaseException:
        server.stop()
        raise
    return server


def wait_until(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    """Poll ``condition`` (a deadline against a hang, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def metric(server: Server, name: str) -> float | None:
    """One sample of the server's /metrics, by its name and labels as printed."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return None if found is None else float(found.group(1))


def kill9(server: Server) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=30)


def events(prefix: str, n: int, pad: int = 0) -> list[dict[str, object]]:
    data: dict[str, object] = {"v": 1}
    if pad:
        data["pad"] = "x" * pad
    return [
        {"specversion": "1.0", "id": f"{prefix}-{i}", "source": "faults", "type": "t", "subject": "acme", "data": data}
        for i in range(n)
    ]


def post(server: Server, batch: list[dict[str, object]], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/events",
        content=httpx.Request("POST", "/", json=batch).content,
        headers={"Authorization": f"Bearer {server.key}", "Content-Type": BATCH, **headers},
        timeout=60,
    )


def ledger_ids(data_dir: Path) -> dict[str, int]:
    """Event id -> how many times it is in the ledger (read straight from the database file)."""
    conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT id, count(*) FROM events GROUP BY id").fetchall())
    finally:
        conn.close()


def strace() -> str:
    path = shutil.which("strace") or "/usr/bin/strace"
    if not Path(path).exists():
        pytest.fail("this test injects faults with strace, which is not installed (./run test installs it)")
    return path


@contextlib.contextmanager
def failing_syscalls(pid: int, syscalls: str = "fsync,fdatasync", error: str = "EIO") -> Iterator[None]:
    """While the block runs, every ``syscalls`` call of every thread of ``pid`` fails with
    ``error``: strace attaches to the running process and injects the error (the real call is
    not made). On exit strace detaches and the process goes on unharmed."""
    tracer = subprocess.Popen(
        [strace(), "-qq", "-f", "-p", str(pid), "-o", "/dev/null", "-e", f"trace={syscalls}",
         "-e", f"inject={syscalls}:error={error}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_traced(pid, tracer)
        yield
    finally:
        if tracer.poll() is None:
            tracer.terminate()
        tracer.wait(timeout=30)


def _wait_traced(pid: int, tracer: subprocess.Popen[bytes]) -> None:
    """Until every thread of ``pid`` is traced by ``tracer`` (its TracerPid in /proc)."""
    deadline = time.monotonic() + 30
    while True:
        if tracer.poll() is not None:
            err = tracer.stderr.read().decode() if tracer.stderr else ""
            pytest.fail(f"strace could not attach to the server (is ptrace allowed here?): {err.strip()}")
        tracers = set()
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                line = next(x for x in (task / "status").read_text().splitlines() if x.startswith("TracerPid:"))
                tracers.add(int(line.split()[1]))
        if tracers == {tracer.pid}:
            return
        assert time.monotonic() < deadline, f"strace did not attach to every thread (tracers: {tracers})"
        time.sleep(0.02)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted at ``where`` (the tests run as root, in CI too)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(
            f"cannot mount a {size} tmpfs at {where} to fill a disk (needs root or CAP_SYS_ADMIN):"
            f" {mounted.stderr.decode().strip()}"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.contextmanager
def disk_full(mount: Path) -> Iterator[None]:
    """Fill the file system at ``mount`` to the last byte; free it again on exit."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096, b"\0"):
            with contextlib.suppress(OSError):
                while os.write(fd, chunk):
                    pass
        with pytest.raises(OSError) as full:
            os.write(fd, b"\0")
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()
