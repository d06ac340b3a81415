"""``./run stack up`` / ``./run stack down``: four engines on free ports and a config that
points at them; ``down`` stops every one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
import redis
from confluent_kafka.admin import AdminClient

from meterline.config import load_config

TESTS = Path(__file__).parent


def run_stack(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "stack", *args], capture_output=True, text=True, env=env, timeout=120)


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_stack_up_writes_a_config_for_running_engines_and_down_stops_them(tmp_path: Path) -> None:
    root, config_file = tmp_path / "stack", tmp_path / "stack.toml"
    up = run_stack("up", "--dir", str(root), "--config", str(config_file))
    try:
        assert up.returncode == 0, up.stderr
        assert "meterline worker --config" in up.stdout
        config = load_config(config_file)
        assert config.storage.engine == "scale"
        topics = AdminClient({"bootstrap.servers": config.kafka.bootstrap_servers}).list_topics(timeout=10)
        assert topics.brokers
        ch = urlsplit(config.clickhouse.url)
        client = clickhouse_connect.get_client(host=ch.hostname, port=ch.port)
        assert client.query("SELECT 1 + 1").result_rows == [(2,)]
        client.close()
        assert redis.Redis.from_url(config.redis.url).ping()
        pg = urlsplit(config.postgres.dsn)
        psql = ["psql", "-h", str(pg.hostname), "-p", str(pg.port), "-U", "postgres", "-d", "meterline", "-Atc"]
        assert subprocess.run([*psql, "SELECT 1"], capture_output=True, text=True, check=True).stdout.strip() == "1"
        ports = [
            (h, int(p))
            for h, p in (
                config.kafka.bootstrap_servers.split(":"),
                (ch.hostname, ch.port),
                (pg.hostname, pg.port),
                (urlsplit(config.redis.url).hostname, urlsplit(config.redis.url).port),
            )
        ]
    finally:
        down = run_stack("down", "--dir", str(root), "--config", str(config_file))
    assert down.returncode == 0, down.stderr
    assert not config_file.exists() and not root.exists()
    assert [listening(str(h), p) for h, p in ports] == [False] * 4


def test_down_without_a_stack_says_so(tmp_path: Path) -> None:
    down = run_stack("down", "--dir", str(tmp_path / "none"), "--config", str(tmp_path / "none.toml"))
    assert down.returncode == 0 and "no stack recorded" in down.stdout
