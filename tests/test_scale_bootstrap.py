"""Scale-mode stores chosen by config: the shared PostgreSQL catalog (also for the CLI's key
commands), the dedupe store of [dedupe], and the error that names the scale extra."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import redis_server
from postgres_server import fresh_schema, server

from meterline.bootstrap import open_keys, open_scale_stores
from meterline.config import Config, load_config
from meterline.domain.clock import FixedClock
from meterline.domain.errors import ConfigError
from meterline.ports.dedupe import EventKey, Verdict

T0 = 1_772_366_400_000_000


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_schema(server()) as dsn:
        yield dsn


def scale_config(dsn: str, **sections: dict[str, object]) -> Config:
    return load_config(None, {"storage": {"engine": "scale"}, "postgres": {"dsn": dsn, "pool_size": 2}, **sections})


def test_key_commands_work_on_the_shared_catalog(dsn: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "METERLINE_STORAGE__ENGINE": "scale",
        "METERLINE_POSTGRES__DSN": dsn,
        "METERLINE_DATA_DIR": str(tmp_path / "unused"),
    }
    created = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "keys", "create", "--scope", "admin"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    with open_keys(scale_config(dsn)) as keys:  # another process, the same catalog
        found = keys.authenticate(secret)
        assert found is not None and {s.value for s in found.scopes} == {"admin"}
    listed = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "keys", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert found.id in listed.stdout
    assert not (tmp_path / "unused").exists()  # nothing was written to the embedded store


@pytest.mark.parametrize("backend", ["postgres", "redis"])
def test_the_dedupe_store_of_the_config_shares_keys_with_the_configured_window(dsn: str, backend: str) -> None:
    clock = FixedClock(T0)
    prefix = f"meterline-test:{os.getpid()}:{backend}:{id(clock)}:"
    config = scale_config(
        dsn,
        dedupe={"backend": backend, "lease": timedelta(seconds=5)},
        redis={"url": redis_server.server(), "key_prefix": prefix},
        ingest={"dedupe_window": timedelta(hours=1)},
    )
    node_a, node_b = open_scale_stores(config, clock), open_scale_stores(config, clock)
    try:
        key = EventKey("default", "s", f"id-{prefix}", b"d")
        claims = node_a.dedupe.claim([key])
        assert claims.verdicts == [Verdict.CLAIMED]
        assert node_b.dedupe.claim([key]).verdicts == [Verdict.BUSY]
        clock.advance(5)  # the configured lease
        taken = node_b.dedupe.claim([key])
        assert taken.verdicts == [Verdict.CLAIMED]
        assert node_b.dedupe.confirm(taken.token, [key]) == [True]
        clock.advance(3600)
        assert node_a.dedupe.claim([key]).verdicts == [Verdict.DUPLICATE]
        clock.advance(1)  # past the configured window
        assert node_a.dedupe.claim([key]).verdicts == [Verdict.CLAIMED]
    finally:
        node_a.close()
        node_b.close()


def test_scale_stores_are_for_the_scale_engine(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        open_scale_stores(load_config(None, {"storage": {"data_dir": tmp_path}}), FixedClock(T0))
    assert 'storage.engine = "scale"' in str(err.value)


def test_an_unreachable_database_is_a_config_error_at_start() -> None:
    config = scale_config("host=127.0.0.1 port=1 dbname=x user=x connect_timeout=1", postgres={
        "dsn": "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=1", "connect_timeout": 1})  # fmt: skip
    with pytest.raises(ConfigError) as err:
        open_scale_stores(config, FixedClock(T0))
    assert "[postgres] dsn" in str(err.value)


def test_a_missing_driver_names_the_scale_extra(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith(("psycopg", "meterline.adapters.postgres"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(ConfigError) as err:
        open_scale_stores(scale_config(dsn), FixedClock(T0))
    assert "'psycopg'" in str(err.value) and "pip install 'meterline[scale]'" in str(err.value)


def test_the_pruner_forgets_keys_that_left_the_window(dsn: str) -> None:
    clock = FixedClock(T0)
    config = scale_config(dsn, ingest={"dedupe_window": timedelta(minutes=1)})
    stores = open_scale_stores(config, clock, prune_every=0.05)
    try:
        keys = [EventKey("default", "s", f"e{i}", b"d") for i in range(3)]
        stores.dedupe.confirm(stores.dedupe.claim(keys).token, keys)
        clock.advance(61)
        stores.start()
        deadline = time.monotonic() + 30
        with stores.catalog.db.tx() as conn:
            while conn.execute("SELECT count(*) FROM dedupe_keys").fetchone() != (0,):
                assert time.monotonic() < deadline, "the pruner did not run"
                conn.commit()
                time.sleep(0.05)
    finally:
        stores.close()


BLOCK_SCALE_DRIVERS = """
import sys
for name in ("psycopg", "psycopg_pool", "confluent_kafka", "clickhouse_connect", "redis", "chdb"):
    sys.modules[name] = None  # as if the scale extra were not installed
"""


def test_embedded_mode_starts_without_the_scale_extra(tmp_path: Path) -> None:
    """`./run serve` installs meterline without extras: the app, the CLI and a worker's
    refusal must not need a scale driver (a fresh process, so nothing is imported already)."""
    code = BLOCK_SCALE_DRIVERS + (
        "import meterline.api.app, meterline.cli.main\n"
        "from meterline.bootstrap import open_worker\n"
        "from meterline.config import load_config\n"
        "from meterline.domain.errors import ConfigError\n"
        "try:\n"
        "    open_worker(load_config(None, {'storage': {'engine': 'scale'}}))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "meterline[scale]" in out.stdout


def test_a_redis_dedupe_store_of_plaintext_keys_is_refused_until_upgrade_dedupe_converts_it(
    dsn: str, tmp_path: Path
) -> None:
    """A node of this version does not start on a Redis dedupe store an older version wrote
    plaintext keys to (its claims would not see them); ``meterline upgrade-dedupe`` converts it
    (with the older nodes stopped), and the keys it held are duplicates after."""
    prefix = f"meterline-test:{os.getpid()}:upgrade:{id(tmp_path)}:"
    url = redis_server.server()
    client = redis.Redis.from_url(url)
    try:
        name = f"{prefix}dd:7:default1:sevt-1"  # (default, s, evt-1), as an older version named it
        client.hset(name, mapping={"s": "c", "t": "0" * 32, "d": b"d", "a": T0})
        config = scale_config(dsn, dedupe={"backend": "redis"}, redis={"url": url, "key_prefix": prefix})
        with pytest.raises(ConfigError, match="stop every API node and sink worker of the older version"):
            open_scale_stores(config, FixedClock(T0))
        env = {
            **os.environ,
            "METERLINE_STORAGE__ENGINE": "scale",
            "METERLINE_POSTGRES__DSN": dsn,
            "METERLINE_DEDUPE__BACKEND": "redis",
            "METERLINE_REDIS__URL": url,
            "METERLINE_REDIS__KEY_PREFIX": prefix,
            "METERLINE_DATA_DIR": str(tmp_path / "unused"),
        }
        run = [sys.executable, "-m", "meterline.cli.main", "upgrade-dedupe"]
        done = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "1 plaintext keys converted" in done.stdout
        stores = open_scale_stores(config, FixedClock(T0))
        try:
            assert stores.dedupe.claim([EventKey("default", "s", "evt-1", b"d")]).verdicts == [Verdict.DUPLICATE]
        finally:
            stores.close()
        assert not list(client.scan_iter(match=prefix + "dd:*"))
        embedded = {k: v for k, v in env.items() if k != "METERLINE_STORAGE__ENGINE"}
        refused = subprocess.run(run, capture_output=True, text=True, env=embedded, timeout=60)
        assert refused.returncode != 0 and 'storage.engine = "scale"' in refused.stderr, refused.stderr
    finally:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
