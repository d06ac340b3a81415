"""The collectors against real endpoints and processes: a prometheus_client app whose counter
is reset, a process that burns CPU and writes to disk, and a real meterline receiving it all."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import prometheus_client
import pytest
from conftest import Server, start_server

from meterline.client import Client, ClientOptions
from meterline.collectors import host, prometheus
from meterline.collectors.state import State

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)  # within ingest windows


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsApp:
    """A real /metrics endpoint; ``restart()`` is the app restarting: a new counter from zero."""

    def __init__(self) -> None:
        self.restart()
        self.httpd = make_server("127.0.0.1", 0, self, handler_class=_Quiet)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/metrics"

    def restart(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter("api_requests", "requests", ["customer"], registry=self.registry)
        self.storage = prometheus_client.Gauge("storage_bytes", "bytes held", ["customer"], registry=self.registry)
        self.app = prometheus_client.make_wsgi_app(self.registry)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def meterline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("collect") / "server-data")
    headers = {"Authorization": f"Bearer {s.key}"}
    for spec in (
        {"slug": "api_requests", "eventType": "api_requests", "aggregation": "SUM", "valueProperty": "$.value"},
        {"slug": "cpu_seconds", "eventType": "host_usage", "aggregation": "SUM", "valueProperty": "$.cpu_seconds"},
    ):
        assert httpx.post(f"{s.url}/api/v1/meters", json=spec, headers=headers).status_code == 201
    yield s
    s.stop()


def _usage(server: Server, meter: str, subject: str) -> Decimal:
    r = httpx.get(
        f"{server.url}/api/v1/meters/{meter}/query",
        params={"subject": subject},
        headers={"Authorization": f"Bearer {server.key}"},
    )
    assert r.status_code == 200, r.text
    return sum((Decimal(str(row["value"])) for row in r.json()["data"]), Decimal(0))


def _target(app: MetricsApp) -> prometheus.Target:
    return prometheus.Target(
        url=app.url,
        name="app-1",
        interval=60,
        subject_label="customer",
        series=[prometheus.Series("api_requests_total", event_type="api_requests")],
    )


def test_counter_increases_across_a_reset_and_a_restarted_collector_count_the_true_increase(
    tmp_path: Path, meterline: Server
) -> None:
    app = MetricsApp()
    target = _target(app)
    state_file = tmp_path / "state.json"
    options = ClientOptions(spool_dir=tmp_path / "spool", max_delay=0)
    subject = "prom-acme"
    counter = app.requests.labels(customer=subject)
    true_increase = 0
    with httpx.Client() as http, Client(meterline.url, meterline.key, options) as client:

        def reading(minutes: int, state: State) -> int:
            return prometheus.collect_once(target, http, client, state, T0 + timedelta(minutes=minutes, seconds=5))

        state = State(state_file)
        counter.inc(5)  # before the collector: not its to count
        assert reading(0, state) == 0  # the baseline
        counter.inc(10)
        true_increase += 10
        assert reading(1, state) == 1
        counter.inc(3)
        true_increase += 3
        assert reading(1, state) == 0  # the same interval again: left for the next one
        assert reading(2, state) == 1
        app.restart()  # the app restarts: its counter starts again from zero ...
        app.requests.labels(customer=subject).inc(50)  # ... and passes the old value before the next scrape
        true_increase += 50
        restarted = State(state_file)  # and the collector restarts too
        assert reading(3, restarted) == 1
        app.requests.labels(customer=subject).inc(2)
        true_increase += 2
        assert reading(4, restarted) == 1
        assert client.flush(60)
        assert client.stats.sent == 4 and client.stats.duplicates == 0
    assert _usage(meterline, "api_requests", subject) == true_increase == 65


def test_a_reading_left_pending_by_a_crash_is_recorded_again_with_the_same_ids(
    tmp_path: Path, meterline: Server
) -> None:
    app = MetricsApp()
    target = _target(app)
    subject = "prom-globex"
    counter = app.requests.labels(customer=subject)
    with httpx.Client() as http, Client(meterline.url, meterline.key, ClientOptions(max_delay=0)) as client:
        state = State(tmp_path / "state.json")
        prometheus.collect_once(target, http, client, state, T0)
        counter.inc(7)
        # a collector that saved its pending reading, recorded it and died before committing:
        at = T0 + timedelta(minutes=1)
        mine = state.get("app-1")
        events, readings = prometheus.reading_events(target, prometheus.scrape(http, app.url), mine["last"], at)
        state.put("app-1", {"last": mine["last"], "pending": {"events": events, "readings": readings}})
        state.save()
        assert all(client.submit(e) for e in events)
        counter.inc(1)
        revived = State(tmp_path / "state.json")
        assert prometheus.collect_once(target, http, client, revived, at + timedelta(seconds=30)) == 1  # the resend
        assert prometheus.collect_once(target, http, client, revived, at + timedelta(minutes=1)) == 1
        assert client.flush(60)
        assert client.stats.duplicates == 1
    assert _usage(meterline, "api_requests", subject) == 8


def test_gauges_give_their_value_and_selection_by_labels(tmp_path: Path) -> None:
    app = MetricsApp()
    app.storage.labels(customer="a").set(1.5e9)
    app.storage.labels(customer="b").set(7)
    target = prometheus.Target(
        url=app.url,
        subject="fixed",
        series=[prometheus.Series("storage_bytes", kind="gauge", labels={"customer": "a"})],
    )
    with httpx.Client() as http:
        events, _ = prometheus.reading_events(target, prometheus.scrape(http, app.url), {}, T0)
    assert [(e["subject"], e["data"]["value"], e["data"]["labels"]) for e in events] == [
        ("fixed", "1500000000.0", {"customer": "a"})
    ]


def test_the_cli_collects_once_from_a_config_file(tmp_path: Path, meterline: Server) -> None:
    app = MetricsApp()
    app.requests.labels(customer="cli-acme").inc(1)
    config = tmp_path / "prom.toml"
    config.write_text(
        f'[[target]]\nurl = "{app.url}"\nname = "cli"\nsubject_label = "customer"\ninterval = 1\n'
        '[[target.series]]\nmetric = "api_requests_total"\nevent_type = "api_requests"\n'
    )
    cmd = [sys.executable, "-m", "meterline.cli.main", "collect", "prometheus", "--config", str(config), "--once"]
    env = {**os.environ, "METERLINE_URL": meterline.url, "METERLINE_API_KEY": meterline.key}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0 and "recorded 0 events" in first.stderr, first.stderr  # the baseline
    assert (tmp_path / "prom.state.json").exists()
    bad = subprocess.run(
        [*cmd[:-3], "--config", str(tmp_path / "missing.toml")], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


BURNER = """
import os, sys, time
print("ready", flush=True)
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < 0.3:
    pass
with open(sys.argv[1], "wb") as f:
    f.write(os.urandom(1 << 20))
    f.flush()
    os.fsync(f.fileno())
print("done", flush=True)
sys.stdin.readline()
"""


def test_the_host_collector_measures_a_processs_cpu_and_disk_for_its_customer(
    tmp_path: Path, meterline: Server
) -> None:
    burner = subprocess.Popen(
        [sys.executable, "-c", BURNER, str(tmp_path / "blob"), "--customer=host-acme"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert burner.stdin is not None and burner.stdout is not None
    try:
        assert burner.stdout.readline().strip() == "ready"
        config = host.HostConfig(
            processes=[host.ProcessRule(match=r"--customer=(?P<subject>[\w-]+)", network=True)], cgroups=[], host="h1"
        )
        state = State(tmp_path / "host.json")
        with Client(meterline.url, meterline.key, ClientOptions(max_delay=0)) as client:
            assert host.collect_once(config, client, state, T0) == 0  # the baseline
            burner.stdin.write("go\n")
            burner.stdin.flush()
            assert burner.stdout.readline().strip() == "done"
            readings = host.read_processes(config.processes)
            events = host.usage_events(config, readings, state.get("host")["last"], T0 + timedelta(minutes=1))
            assert host.collect_once(config, client, state, T0 + timedelta(minutes=1)) == 1
            assert client.flush(60)
    finally:
        burner.stdin.close()
        burner.wait(30)
    (event,) = events
    data = {k: Decimal(v) for k, v in event["data"].items()}
    assert event["subject"] == "host-acme" and event["type"] == "host_usage"
    assert data["cpu_seconds"] >= Decimal("0.28")  # 0.3 s burnt, read in clock ticks of 0.01 s
    assert data["disk_write_bytes"] >= 1 << 20 or data["disk_write_bytes"] == 0  # 0: no per-process I/O accounting
    assert data["memory_gb_seconds"] > 0 and "net_rx_bytes" in data
    assert _usage(meterline, "cpu_seconds", "host-acme") == data["cpu_seconds"]


def test_host_configs_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "host.toml"
    path.write_text('[[process]]\nmatch = "worker"\n')
    with pytest.raises(ValueError, match="subject"):
        host.load_host_config(path)
    path.write_text(
        'interval = 30\n[[process]]\nmatch = "--tenant=(?P<subject>\\\\w+)"\n[[cgroup]]\npath = "/x"\nsubject = "a"\n'
    )
    config = host.load_host_config(path)
    assert config.interval == 30 and host.read_cgroups(config.cgroups) == {}
