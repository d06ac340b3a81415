"""The machine's Redis for tests, started when it is not running (``METERLINE_TEST_REDIS``
overrides the URL). Tests keep their keys under a prefix of their own and delete them after."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time

import redis

DEFAULT = "redis://127.0.0.1:6379/0"


@functools.cache
def server() -> str:
    url = os.environ.get("METERLINE_TEST_REDIS", DEFAULT)
    if _reachable(url):
        return url
    if shutil.which("redis-server") is None:
        raise RuntimeError(f"Redis is not reachable at {url!r} and redis-server is not installed")
    # the machine's own instance, as it is normally started: in memory only
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=False,
        capture_output=True,
    )
    deadline = time.monotonic() + 30
    while not _reachable(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis did not come up at {url!r}")
        time.sleep(0.1)
    return url


def _reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False
