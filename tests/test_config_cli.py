"""Configuration loading and the command line, run as real processes where it matters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import Server, start_server

from meterline.config import load_config
from meterline.domain.errors import ConfigError

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=stdin,
        timeout=60,
    )


def test_example_config_loads_and_is_complete() -> None:
    config = load_config(ROOT / "meterline.example.toml")
    assert config.server.port == 8888 and config.storage.fsync == "full"
    assert [m.slug for m in config.meters] == ["api_calls", "tokens"]
    text = (ROOT / "meterline.example.toml").read_text()
    sections = ("server", "storage", "ingest", "auth", "alerts", "portal", "health", "log", "billing", "metering")
    for section in (*sections, "kafka", "clickhouse", "postgres", "redis", "dedupe", "erasure"):
        for field in type(getattr(config, section)).model_fields:
            assert f"{field} =" in text, f"{section}.{field} is not documented in the example"


def test_every_problem_is_listed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[server]\nport = 0\nnope = 1\n[storage]\nfsync = "sometimes"\n'
        '[[meters]]\nslug = "x"\nevent_type = "e"\naggregation = "SUM"\n'
    )
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert len(exc.value.extra["problems"]) == 4
    r = cli("check-config", "--config", str(bad))
    assert r.returncode != 0 and "server.port" in r.stderr and "storage.fsync" in r.stderr


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[server]\nport = 7000\n")
    monkeypatch.setenv("METERLINE_SERVER__PORT", "7001")
    monkeypatch.setenv("METERLINE_DATA_DIR", str(tmp_path / "d"))
    config = load_config(f)
    assert config.server.port == 7001 and config.storage.data_dir == tmp_path / "d"
    assert load_config(f, {"server": {"port": 7002}}).server.port == 7002


def test_serve_bootstraps_admin_key_and_prints_it(tmp_path: Path) -> None:
    from conftest import free_port, wait_ready

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterline.cli.main", "serve", "--data-dir", str(tmp_path / "d"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert f"http://127.0.0.1:{port}" in lines[0]
        key = lines[2].strip()
        assert key.startswith("ml_") and "Authorization: Bearer" in lines[3]
        wait_ready(Server(f"http://127.0.0.1:{port}", key, tmp_path, proc, port))  # type: ignore[arg-type]
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/meters", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_on_a_port_in_use_is_one_error_line_and_makes_nothing(tmp_path: Path) -> None:
    """The address is bound before the store is opened: a port another process listens on is
    one readable line and exit 2, no "listening on", no admin key shown, no data directory."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = cli("serve", "--data-dir", str(tmp_path / "d"), "--port", str(port))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port} (address already in use); is another server running there?"
        " choose another --port / --host (or server.port / server.host)"
    ]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args", [("keys", "list"), ("keys", "revoke", "k1"), ("rebuild", "--check"), ("rebuild",)])
def test_commands_on_a_data_directory_without_a_store_make_none(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Listing or revoking keys and rebuilding read an existing store: a mistyped directory is
    one error line and exit 2 (they created an empty store there and answered as if all was well)."""
    missing = tmp_path / "typo"
    r = cli(*args, "--data-dir", str(missing))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert r.stderr.splitlines() == [f"error: no meterline store in {missing}"]
    assert not missing.exists()


def test_a_key_created_before_the_first_start_makes_the_store(tmp_path: Path) -> None:
    data = str(tmp_path / "new")
    created = cli("keys", "create", "--scope", "ingest", "--data-dir", data)
    assert created.returncode == 0, created.stderr
    assert "ingest" in cli("keys", "list", "--data-dir", data).stdout


def test_keys_create_list_revoke_while_server_runs(server: Server) -> None:
    d = str(server.data_dir)
    r = cli("keys", "create", "--scope", "ingest", "--scope", "read", "--name", "app", "--data-dir", d)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    h = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{server.url}/api/v1/meters", headers=h).status_code == 200
    assert httpx.post(f"{server.url}/api/v1/meters", headers=h, json={}).status_code == 403
    key_id = key.split("_")[1]
    assert key_id in cli("keys", "list", "--data-dir", d).stdout
    assert cli("keys", "revoke", key_id, "--data-dir", d).returncode == 0
    import time

    time.sleep(2.1)  # the server caches a verified key for key_cache_seconds
    assert httpx.get(f"{server.url}/api/v1/meters", headers=h).status_code == 401
    bad = cli("keys", "create", "--scope", "superuser", "--data-dir", d)
    assert bad.returncode != 0 and "not a scope" in bad.stderr


def test_api_keys_endpoint(server: Server) -> None:
    h = {"Authorization": f"Bearer {server.key}"}
    r = httpx.post(f"{server.url}/api/v1/keys", headers=h, json={"name": "ci", "scopes": ["ingest"]})
    assert r.status_code == 201 and r.json()["key"].startswith("ml_")
    listed = httpx.get(f"{server.url}/api/v1/keys", headers=h).json()
    assert "key" not in listed[-1] and listed[-1]["scopes"] == ["ingest"]
    assert httpx.delete(f"{server.url}/api/v1/keys/{r.json()['id']}", headers=h).status_code == 204


def test_ingest_usage_meters_rebuild_cli(server: Server, tmp_path: Path) -> None:
    env = {"METERLINE_URL": server.url, "METERLINE_API_KEY": server.key}
    r = cli(
        "meters",
        "create",
        "--slug",
        "tok",
        "--event-type",
        "prompt",
        "--aggregation",
        "SUM",
        "--value-property",
        "$.tokens",
        "--group-by",
        "model=$.model",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    lines = [
        json.dumps(
            {
                "specversion": "1.0",
                "id": str(i),
                "source": "cli",
                "type": "prompt",
                "subject": "acme",
                "data": {"tokens": i, "model": "a" if i % 2 else "b"},
            }
        )
        for i in range(1, 11)
    ]
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(lines) + "\n")
    r = cli("ingest", str(f), "--batch-size", "3", env=env)
    assert r.returncode == 0, r.stderr
    assert "accepted 10, duplicates 0, rejected 0" in r.stdout
    r = cli("ingest", "-", env=env, stdin=lines[0] + "\n" + '{"id": "broken"}\n')
    assert r.returncode == 1
    assert "accepted 0, duplicates 1, rejected 1" in r.stdout and "missing_field" in r.stderr
    r = cli("usage", "tok", "--group-by", "model", "--csv", env=env)
    assert (
        r.returncode == 0
        and r.stdout.splitlines()[1:] == [line for line in r.stdout.splitlines()[1:]]
        and r.stdout.splitlines()[-1].endswith(",b,30")
    )
    r = cli("usage", "tok", "--filter", "model=a", env=env)
    assert r.returncode == 0 and "25" in r.stdout
    assert "tok" in cli("meters", "list", env=env).stdout
    server.stop()
    r = cli("rebuild", "--check", "--data-dir", str(server.data_dir))
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr


def test_client_commands_report_errors(tmp_path: Path) -> None:
    r = cli("usage", "x", env={"METERLINE_URL": "http://127.0.0.1:9", "METERLINE_API_KEY": "k"})
    assert r.returncode != 0
    s = start_server(tmp_path / "d")
    try:
        r = cli("usage", "missing", env={"METERLINE_URL": s.url, "METERLINE_API_KEY": s.key})
        assert r.returncode == 2 and "404" in r.stderr and "Traceback" not in r.stderr
    finally:
        s.stop()


def test_config_file_meters_are_created_and_checked(tmp_path: Path) -> None:
    from conftest import make_key
    from starlette.testclient import TestClient

    from meterline.api.app import create_app

    f = tmp_path / "m.toml"
    f.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "d"}"\n'
        '[[meters]]\nslug = "calls"\nevent_type = "request"\naggregation = "COUNT"\n'
    )
    key = make_key(tmp_path / "d", ["admin"])
    with TestClient(create_app(load_config(f))) as client:
        meters = client.get("/api/v1/meters", headers={"Authorization": f"Bearer {key}"}).json()
        assert [(m["slug"], m["aggregation"]) for m in meters] == [("calls", "COUNT")]
    with TestClient(create_app(load_config(f))):  # same definition again: fine
        pass
    f.write_text(f.read_text().replace('"COUNT"', '"SUM"\nvalue_property = "$.n"'))
    with pytest.raises(ConfigError, match="exists with a different definition"):
        create_app(load_config(f))
