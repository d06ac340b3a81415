"""A meterline site on the local scale stack for tests: a config of its own (Kafka topic,
ClickHouse database, PostgreSQL schema) with sink workers and API nodes as real processes, and
in-process apps over the same config. Tests sharing a site isolate themselves by namespace."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from postgres_server import fresh_schema
from stack.launch import Stack

from meterline.adapters.clickhouse.client import Connection
from meterline.bootstrap import open_keys
from meterline.config import Config, load_config
from meterline.domain.auth.keys import parse_scopes

TOKEN_METERS = """
[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"

[[meters]]
slug = "prompts"
event_type = "prompt"
aggregation = "COUNT"
"""
"""The two meters many scale tests count `prompt` events with (config text to append)."""


def write_config(stack: Stack, path: Path, name: str, dsn: str, partitions: int = 4, extra: str = "") -> Path:
    """A config of ``stack`` whose topic, ClickHouse database and PostgreSQL schema (``dsn``)
    are this site's own."""
    path.write_text(
        stack.config_toml()
        .replace(f'dsn = "{stack.postgres}"', f'dsn = "{dsn}"')
        .replace('topic = "meterline-events"', f'topic = "{name}"\nconsumer_group = "{name}"')  # groups unshared
        .replace("partitions = 4", f"partitions = {partitions}")
        .replace('database = "meterline"', f'database = "{name}"')
        .replace(f'data_dir = "{stack.dir}/node-data"', f'data_dir = "{path.parent}/node-data"')
        + extra
    )
    return path


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "meterline.cli.main", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "METERLINE_LOG__FORMAT": "text", **(env or {})},
        )


@dataclass
class Site:
    config_path: Path
    dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    def key(self, namespace: str, scopes: tuple[str, ...] = ("admin",)) -> str:
        """A new key of ``namespace`` in the site's shared catalog."""
        with open_keys(self.config) as keys:
            _, secret = keys.create(namespace, "test", parse_scopes(list(scopes)))
        return secret

    def worker(self, log: str = "workers.log") -> subprocess.Popen[bytes]:
        process = spawn(["worker", "--config", str(self.config_path)], self.dir / log)
        self.processes.append(process)
        return process

    def node(self, port: int, log: str = "nodes.log", env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A `meterline serve` API node on ``port``, ready (``/readyz`` 200) when returned."""
        argv = ["serve", "--config", str(self.config_path), "--host", "127.0.0.1", "--port", str(port)]
        process = spawn(argv, self.dir / log, {"METERLINE_AUTH__BOOTSTRAP_ADMIN_KEY": "false", **(env or {})})
        self.processes.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"API node exited with {process.returncode}: {self.log_tail(log)}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"API node did not become ready: {self.log_tail(log)}")

    def log_tail(self, log: str, chars: int = 3000) -> str:
        path = self.dir / log
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextmanager
def site(stack: Stack, root: Path, partitions: int = 4, extra: str = "", postgres: str | None = None) -> Iterator[Site]:
    """A fresh site (its ClickHouse database and PostgreSQL schema dropped afterwards); its
    catalog in the stack's PostgreSQL, or in the server of the DSN ``postgres``."""
    name = f"t{uuid.uuid4().hex[:12]}"
    root.mkdir(parents=True, exist_ok=True)
    with fresh_schema(postgres or stack.postgres) as dsn:
        path = write_config(stack, root / "scale.toml", name, dsn, partitions, extra)
        s = Site(path, root)
        try:
            yield s
        finally:
            s.stop()
            config = load_config(path)
            conn = Connection(config.clickhouse.url, config.clickhouse.database)
            conn.command(f"DROP DATABASE IF EXISTS `{config.clickhouse.database}`")
            conn.close()
